"""Resolve `MODEL[:PRETRAINED]` specs to open_clip CLIP models.

MODEL is an open_clip architecture name (built-in, or one of the JSON configs shipped in
`promptkd_ray/core/models/model_configs/`). PRETRAINED is optional and is either
- a local file: an OpenAI `.pt` (TorchScript archive or plain state dict, e.g. the authors'
  `./clip/ViT-B-16.pt`), an open_clip checkpoint (`{"state_dict": ...}` or a bare state dict,
  `module.` prefixes allowed) or a `.safetensors` file; or
- an open_clip pretrained tag (`openai`, `dfn5b`, ...), resolved by open_clip (which needs its
  download cache or network).

Every way a spec can fail ends in a `ModelSpecError` with one sentence.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ...errors import ModelSpecError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
# Keys of OpenAI's TorchScript archives that are not weights.
_OPENAI_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
_registered = False


@dataclass(frozen=True)
class ModelSpec:
    name: str  # open_clip architecture name, e.g. "ViT-B-16-quickgelu"
    pretrained: Optional[str] = None  # open_clip tag or local weights file; None = random init

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        if not isinstance(spec, str) or not spec.strip():
            raise ModelSpecError(f"A model spec must look like MODEL[:PRETRAINED], got {spec!r}.")
        name, sep, pretrained = spec.strip().partition(":")
        return cls(name=name, pretrained=pretrained if sep and pretrained else None)

    def __str__(self) -> str:
        return self.name if self.pretrained is None else f"{self.name}:{self.pretrained}"


def register_model_configs(extra_dir: Optional[Path] = None) -> None:
    """Register the package's JSON model configs (and optionally a user folder) with open_clip."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    if extra_dir is not None:
        open_clip.add_model_config(Path(extra_dir))


def model_config(name: str) -> dict:
    """The open_clip config dict of an architecture name, or a ModelSpecError."""
    import open_clip

    register_model_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = open_clip.list_models()
        close = [m for m in known if m.lower().startswith(name.lower().split("-")[0])][:8]
        raise ModelSpecError(f"Unknown open_clip model {name!r}; similar known names: {close or known[:8]}.")
    return cfg


def vision_setting(spec: "str | ModelSpec", key: str) -> int:
    """An integer of a spec's config without building the model: `embed_dim` (the feature
    dimension) or a `vision_cfg` key such as `image_size`."""
    cfg = model_config((ModelSpec.parse(spec) if isinstance(spec, str) else spec).name)
    value = cfg[key] if key == "embed_dim" else cfg["vision_cfg"][key]
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def load_clip(spec: "str | ModelSpec", device: str = "cpu") -> torch.nn.Module:
    """Create the open_clip CLIP model of `spec` in fp32, eval mode, with its weights loaded."""
    import open_clip

    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    model_config(spec.name)  # validates the name
    pretrained = spec.pretrained
    if pretrained is not None and _looks_like_path(pretrained):
        with quiet_open_clip(random_init_intended=True):  # our weights go in next: its warning would mislead
            model = open_clip.create_model(spec.name, pretrained=None, device=device)
        state_dict = read_weights_file(pretrained)
        load_weights_into(model, state_dict, spec)
    elif pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        if pretrained not in tags:
            raise ModelSpecError(
                f"{pretrained!r} is neither an existing weights file nor a pretrained tag of "
                f"{spec.name} (known tags: {tags or 'none'})."
            )
        try:
            with quiet_open_clip():
                model = open_clip.create_model(spec.name, pretrained=pretrained, device=device)
        except Exception as exc:  # open_clip raises RuntimeError on failed downloads
            raise ModelSpecError(
                f"Could not load pretrained weights {spec} (no network here? pass a local file "
                f"instead): {exc}"
            ) from exc
    else:
        with quiet_open_clip():
            model = open_clip.create_model(spec.name, pretrained=None, device=device)
    return model.float().eval()


class quiet_open_clip:
    """While open_clip builds a model or tokenizer (it logs on the root logger, in every Ray worker
    too): drop its INFO chatter unless the root logger is at DEBUG, and, when the random weights are
    intended (`random_init_intended`: ours are loaded right after, or training starts from scratch),
    its "No pretrained weights loaded … initialized randomly" warning."""

    def __init__(self, random_init_intended: bool = False):
        self.random_init_intended = random_init_intended

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}open_clip{os.sep}" not in record.pathname:
            return True
        if record.levelno < logging.WARNING:
            return logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        return not (self.random_init_intended and str(record.msg).startswith("No pretrained weights loaded"))

    def __enter__(self):
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or pretrained.startswith(".")
        or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar"))
        or os.path.exists(pretrained)
    )


def read_weights_file(path: "str | os.PathLike") -> dict:
    """Read a state dict from an OpenAI TorchScript archive, a torch state dict / checkpoint, or
    safetensors, without unpickling arbitrary objects. `module.` prefixes are stripped."""
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"Weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _read_torch_file(path)
    except ModelSpecError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelSpecError(f"Weights file {path} is not readable ({type(exc).__name__}: {first}).") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelSpecError(f"Weights file {path} holds no state dict.")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    for key in _OPENAI_NON_WEIGHT_KEYS:
        state.pop(key, None)
    return state


def _read_torch_file(path: Path) -> dict:
    from .torchscript import is_torchscript, read_torchscript_weights

    if is_torchscript(path):  # OpenAI's released .pt files: read, never run (torch.jit.load would)
        return read_torchscript_weights(path)
    return torch.load(str(path), map_location="cpu", weights_only=True)


def load_weights_into(model: torch.nn.Module, state_dict: dict, spec: "ModelSpec | str") -> None:
    """Load `state_dict` strictly into `model`; any mismatch is a one-sentence ModelSpecError."""
    expected = model.state_dict()
    state_dict = dict(state_dict)
    if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != expected["logit_scale"].ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(expected["logit_scale"].shape)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (first: {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise ModelSpecError(f"The weights of {spec} do not fit the model config: {'; '.join(parts)}.")
    model.load_state_dict(state_dict, strict=True)
