"""Read the authors' Dassl checkpoints safely and derive the image tower's architecture from shapes.

Design decisions:
- `torch.load(weights_only=True)` only. A Dassl checkpoint (`{"state_dict", "epoch", "optimizer",
  "scheduler", "val_result"}`) also pickles the LR scheduler, whose `successor` is a torch
  `CosineAnnealingLR` *object* holding the `SGD` optimizer (with a `collections.defaultdict` state),
  which the restricted unpickler refuses. We list the file's non-allowlisted globals without
  executing anything (`torch.serialization.get_unsafe_globals_in_checkpoint`) and map each one to
  an inert placeholder — a class that ignores its arguments and state, or a plain `{}` for
  `defaultdict` — then load again with `weights_only=True`. No code named by the file ever runs:
  the unpickler calls the placeholder instead (torch still refuses `os`/`sys` globals outright),
  and only `state_dict`, which must hold only tensors, is used.
- TorchScript archives are never given to `torch.jit.load`, which runs code stored in them; their
  tensors are read by `core.models.torchscript`.
- Keys: a `module.` prefix (DataParallel) is stripped; `prompt_learner.token_prefix*/_suffix*`
  (class-name embeddings of the authors' class list) and `prompt_learner.ZS_image_encoder.*` (a
  frozen copy of the image tower) are dropped — we recompute or do not need them.
- Architecture comes from shapes: width = conv1 out channels, patch = conv1 kernel, grid =
  √(positional rows − 1), layers = number of blocks, output dim = proj columns, n_ctx = `VPT` rows,
  prompt depth = 1 + number of `VPT_shallow` blocks (which must be blocks 1 … depth-1). Heads cannot
  be read from shapes: OpenAI's convention heads = width // 64 is the default (`head_width`).
- Every failure is an `OfficialCheckpointError` (a `ModelSpecError`) with one sentence.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ModelSpecError

log = logging.getLogger(__name__)

IGNORED_PREFIXES = (
    "prompt_learner.token_prefix",
    "prompt_learner.token_suffix",
    "prompt_learner.ZS_image_encoder.",
)
OPENAI_HEAD_WIDTH = 64


class OfficialCheckpointError(ModelSpecError):
    """An official checkpoint that is unreadable, of the other kind, or does not fit."""


class _Inert:
    """Stands in for any non-tensor object pickled in a checkpoint: takes and keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _empty_dict(*args, **kwargs) -> dict:
    """Stands in for `collections.defaultdict` (the unpickler then fills it like a dict)."""
    return {}


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message (torch's can run to many lines)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    text = re.split(r"(?<=[a-z0-9)])\.\s+(?=[A-Z])", text)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def torch_load_restricted(path: "str | os.PathLike") -> object:
    """torch.load(weights_only=True); a refused global is replaced by an inert placeholder."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    placeholders = [(_empty_dict if name == "collections.defaultdict" else _Inert, name) for name in names]
    log.debug("%s: replacing pickled globals %s by inert placeholders", path, names)
    with torch.serialization.safe_globals(placeholders):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_official_checkpoint(path: "str | os.PathLike") -> dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint (Dassl dict or bare state dict), with a
    `module.` prefix stripped and the ignored buffers dropped."""
    from ..core.models.torchscript import is_torchscript

    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"Checkpoint {path} does not exist.")
    if is_torchscript(path):
        raise OfficialCheckpointError(
            f"{path} is a TorchScript archive (a base CLIP file such as ViT-B-16.pt?), not an official checkpoint."
        )
    try:
        obj = torch_load_restricted(path)
    except Exception as exc:  # truncated zip, not a torch file, blocked global, …
        raise OfficialCheckpointError(
            f"Checkpoint {path} is truncated or corrupt, not a readable PyTorch file ({first_line(exc)})."
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state:
        raise OfficialCheckpointError(
            f"Checkpoint {path} holds no state dict (found {type(state).__name__})."
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise OfficialCheckpointError(
            f"Checkpoint {path} has non-tensor entries in its state dict (first: {bad[0]!r})."
        )
    out = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.startswith(IGNORED_PREFIXES):
            out[key] = value
    return out


def checkpoint_kind(state: dict) -> str:
    """ "student" (PromptKD), "teacher" (PromptSRC / IVLP), "clip" (a base CLIP file) or "unknown"."""
    if any(k.startswith("VPT_image_trans.") for k in state):
        return "student"
    if "prompt_learner.ctx" in state or any(k.startswith("text_encoder.") for k in state):
        return "teacher"
    if "visual.conv1.weight" in state or "token_embedding.weight" in state:
        return "clip"
    return "unknown"


_KIND_WORDS = {
    "student": (
        "an official PromptKD student checkpoint",
        "load_official_student / `promptkd-ray import student`",
    ),
    "teacher": (
        "an official PromptSRC teacher checkpoint",
        "load_official_teacher / `promptkd-ray import teacher`",
    ),
}


def require_kind(state: dict, wanted: str, path) -> None:
    found = checkpoint_kind(state)
    if found == wanted:
        return
    what, _ = _KIND_WORDS[wanted]
    if found in _KIND_WORDS:
        other, how = _KIND_WORDS[found]
        marker = "VPT_image_trans.*" if found == "student" else "prompt_learner.ctx and text_encoder.*"
        raise OfficialCheckpointError(f"{path} is {other} (it has {marker}), not {what}; load it with {how}.")
    if found == "clip":
        raise OfficialCheckpointError(
            f"{path} is a base CLIP weights file (visual.*, token_embedding.*), not {what} (image_encoder.*, …)."
        )
    raise OfficialCheckpointError(
        f"{path} is not {what}: expected keys image_encoder.*, found {sorted(state)[:3]}."
    )


def need(state: dict, key: str, source) -> torch.Tensor:
    if key not in state:
        raise OfficialCheckpointError(f"{source} lacks {key!r}, so it is not a complete official checkpoint.")
    return state[key]


def block_indices(state: dict, prefix: str, suffix: str) -> list[int]:
    """Sorted k of keys f"{prefix}transformer.resblocks.{k}.{suffix}"."""
    head = prefix + "transformer.resblocks."
    found = set()
    for key in state:
        if key.startswith(head) and key.endswith("." + suffix):
            index = key[len(head) : -len(suffix) - 1]
            if index.isdigit():
                found.add(int(index))
    return sorted(found)


def prompt_depth(state: dict, prefix: str, first_key: str, source) -> int:
    """1 + number of `VPT_shallow` blocks (0 without prompts); they must be blocks 1 … depth-1."""
    deep = block_indices(state, prefix, "VPT_shallow")
    if first_key not in state:
        if deep:
            raise OfficialCheckpointError(f"{source} has deep prompts under {prefix} but no {first_key}.")
        return 0
    if deep != list(range(1, len(deep) + 1)):
        raise OfficialCheckpointError(
            f"{source} has deep prompts at blocks {deep} under {prefix}; expected blocks 1 … depth-1."
        )
    return len(deep) + 1


@dataclass(frozen=True)
class VisionArch:
    """An OpenAI-style ViT image tower read from checkpoint shapes (+ the prompts it carries)."""

    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int
    output_dim: int
    mlp_ratio: float
    n_ctx: int  # visual prompt tokens per layer (0 = none)
    depth: int  # prompted layers (0 = none)

    def as_dict(self) -> dict:
        return asdict(self)

    def build(self) -> torch.nn.Module:
        """A randomly initialised open_clip VisionTransformer (QuickGELU) of this shape."""
        from open_clip.model import QuickGELU
        from open_clip.transformer import VisionTransformer

        return VisionTransformer(
            image_size=self.image_size,
            patch_size=self.patch_size,
            width=self.width,
            layers=self.layers,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            output_dim=self.output_dim,
            act_layer=QuickGELU,
        )


def heads_for(width: int, head_width: int, source, what: str) -> int:
    if head_width < 1 or width % head_width:
        raise OfficialCheckpointError(
            f"The {what} of {source} has width {width}, which is not a multiple of head_width {head_width}."
        )
    return width // head_width


def vision_arch(state: dict, prefix: str, source, head_width: int = OPENAI_HEAD_WIDTH) -> VisionArch:
    conv = need(state, prefix + "conv1.weight", source)  # [width, 3, patch, patch]
    pos = need(state, prefix + "positional_embedding", source)  # [grid² + 1, width]
    proj = need(state, prefix + "proj", source)  # [width, output_dim]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(pos.shape[0]) - 1)
    if grid * grid + 1 != pos.shape[0] or pos.shape[1] != width or proj.shape[0] != width:
        raise OfficialCheckpointError(
            f"The image tower of {source} has inconsistent shapes (conv1 {tuple(conv.shape)}, "
            f"positional_embedding {tuple(pos.shape)}, proj {tuple(proj.shape)})."
        )
    layers = len(block_indices(state, prefix, "attn.in_proj_weight"))
    fc = need(state, prefix + "transformer.resblocks.0.mlp.c_fc.weight", source)  # [hidden, width]
    depth = prompt_depth(state, prefix, prefix + "VPT", source)
    n_ctx = int(state[prefix + "VPT"].shape[0]) if depth else 0
    if depth > layers:
        raise OfficialCheckpointError(f"{source} prompts {depth} layers of a {layers}-layer image tower.")
    return VisionArch(
        width=width,
        layers=layers,
        heads=heads_for(width, head_width, source, "image tower"),
        patch_size=patch,
        image_size=grid * patch,
        output_dim=int(proj.shape[1]),
        mlp_ratio=fc.shape[0] / width,
        n_ctx=n_ctx,
        depth=depth,
    )


def split_prompts(state: dict, prefix: str, first_key: str, depth: int) -> tuple[dict, list[torch.Tensor]]:
    """(state under `prefix` without prompts, with the prefix removed; [first, deep_1, …, deep_{depth-1}])."""
    prompts = [state[first_key]] if depth else []
    prompts += [state[f"{prefix}transformer.resblocks.{i}.VPT_shallow"] for i in range(1, depth)]
    backbone = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and k != first_key and not k.endswith(".VPT_shallow")
    }
    return backbone, prompts


def load_strict(module: torch.nn.Module, state: dict, source, what: str) -> None:
    """load_state_dict(strict) with every mismatch reported in one sentence."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = [f"{len(wrong)} shape mismatches (first: {wrong[0]})"] if wrong else []
        parts += [f"{len(missing)} missing keys (first: {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (first: {unexpected[0]})"] if unexpected else []
        raise OfficialCheckpointError(
            f"The {what} of {source} does not fit its derived architecture: {'; '.join(parts)}."
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
