"""Load an official PromptSRC / PromptKD teacher checkpoint as our (prompted) `Teacher`.

Key mapping (authors → ours), after `module.` is stripped and the ignored buffers dropped:
    image_encoder.VPT / …resblocks.{i}.VPT_shallow      → image_encoder.shallow_prompt / deep_prompts.{i-1}
    image_encoder.<other>                               → clip.visual.<other>
    prompt_learner.ctx                                  → text_encoder.ctx (positions 1 … n_ctx)
    text_encoder.transformer.resblocks.{i}.VPT_shallow  → text_encoder.deep_prompts.{i-1}
    text_encoder.{positional_embedding, text_projection, ln_final.*, transformer.*}
                                                        → clip.{same}
    logit_scale (log)                                   → Teacher.logit_scale = exp(logit_scale)
    (base CLIP file) token_embedding.weight            → clip.token_embedding.weight

Design decisions:
- The checkpoint has no `token_embedding`; the base OpenAI CLIP file (TorchScript archive or state
  dict) supplies it, and must fit: same text width, context length and a 49,408-token vocabulary
  (the OpenAI BPE tokenizer). Its other weights are not used: the checkpoint holds the frozen towers.
- Prompt text as the authors: "{prefix} {classname}." with `_` → space, prefix "a photo of a" when
  n_ctx ≤ 4 (their CTX_INIT rule; ctx overwrites positions 1 … n_ctx), else "X X … X".
- Vision and text prompts must have the same n_ctx (our `Teacher` shares it; the authors' files do).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.models.teacher import Teacher
from ..core.models.torchscript import is_torchscript, read_torchscript_weights
from .checkpoint import (
    OfficialCheckpointError,
    VisionArch,
    block_indices,
    first_line,
    heads_for,
    load_strict,
    need,
    prompt_depth,
    read_official_checkpoint,
    require_kind,
    split_prompts,
    torch_load_restricted,
    vision_arch,
)

AUTHORS_CTX_INIT = "a photo of a"
OPENAI_VOCAB_SIZE = 49408


@dataclass(frozen=True)
class TextArch:
    width: int
    layers: int
    heads: int
    context_length: int
    vocab_size: int
    output_dim: int
    mlp_ratio: float
    n_ctx: int
    depth: int

    def as_dict(self) -> dict:
        return asdict(self)


class OfficialTeacher(nn.Module):
    """An imported teacher, eval mode: `encode_image` (normalised), `class_vectors()`, `logit_scale`."""

    def __init__(self, teacher: Teacher, classnames: Sequence[str], model_config: dict, source: str):
        super().__init__()
        self.teacher = teacher
        self.classnames = tuple(classnames)
        self.model_config = model_config  # open_clip config dict of the derived architecture
        self.source = source
        self.logit_scale = float(teacher.logit_scale)  # already exponentiated

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W], CLIP-normalised → [B, d], L2-normalised."""
        return self.teacher.encode_image(images)

    @torch.no_grad()
    def class_vectors(self, batch_size: int = 256) -> torch.Tensor:
        """Normalised prompted text features [N, d] of `classnames`, in order."""
        chunks = [
            self.teacher.encode_text(list(self.classnames[i : i + batch_size]))
            for i in range(0, len(self.classnames), batch_size)
        ]
        return F.normalize(torch.cat(chunks).float(), dim=-1)


def read_base_clip(path: "str | os.PathLike") -> dict:
    """State dict of an OpenAI CLIP file: a TorchScript archive (as released) or a (Dassl) state dict."""
    if not os.path.isfile(path):
        raise OfficialCheckpointError(f"Base CLIP file {path} does not exist.")
    if is_torchscript(path):  # as released: read its tensors, never run it (torch.jit.load would)
        try:
            return read_torchscript_weights(path)
        except ValueError as exc:
            raise OfficialCheckpointError(f"Base CLIP {exc}.") from None
    try:
        obj = torch_load_restricted(path)
    except Exception as exc:
        raise OfficialCheckpointError(
            f"Base CLIP file {path} is truncated or corrupt, not a readable PyTorch file ({first_line(exc)})."
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"Base CLIP file {path} holds no state dict.")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def text_arch(
    state: dict,
    source,
    head_width: int,
    prefix: str = "text_encoder.",
    ctx_key: str = "prompt_learner.ctx",
    vocab_size: int = OPENAI_VOCAB_SIZE,
) -> TextArch:
    """The text tower under `prefix` (a teacher's `text_encoder.`, or "" in a base CLIP file)."""
    pos = need(state, prefix + "positional_embedding", source)  # [context_length, width]
    proj = need(state, prefix + "text_projection", source)  # [width, output_dim]
    fc = need(state, prefix + "transformer.resblocks.0.mlp.c_fc.weight", source)  # [hidden, width]
    width = int(pos.shape[1])
    depth = prompt_depth(state, prefix, ctx_key, source)
    return TextArch(
        width=width,
        layers=len(block_indices(state, prefix, "attn.in_proj_weight")),
        heads=heads_for(width, head_width, source, "text tower"),
        context_length=int(pos.shape[0]),
        vocab_size=vocab_size,
        output_dim=int(proj.shape[1]),
        mlp_ratio=fc.shape[0] / width,
        n_ctx=int(state[ctx_key].shape[0]) if depth else 0,
        depth=depth,
    )


def base_token_embedding(base: dict, clip_path, text: TextArch, vision: VisionArch, source) -> torch.Tensor:
    """The base CLIP's token embedding [vocab, width], after checking that the file fits the teacher."""
    emb = base.get("token_embedding.weight")
    if emb is None:
        raise OfficialCheckpointError(
            f"Base CLIP file {clip_path} has no token_embedding.weight, so it is not a CLIP model."
        )
    conv = base.get("visual.conv1.weight")
    if emb.shape[1] != text.width or (conv is not None and conv.shape[0] != vision.width):
        found = f"text width {emb.shape[1]}" + (f", image width {conv.shape[0]}" if conv is not None else "")
        raise OfficialCheckpointError(
            f"Base CLIP {clip_path} ({found}) does not fit the teacher {source} (text width {text.width}, "
            f"image width {vision.width}); pass the CLIP it was trained from (ViT-L-14.pt for a ViT-L/14 teacher)."
        )
    pos = base.get("positional_embedding")
    if emb.shape[0] != OPENAI_VOCAB_SIZE or (pos is not None and pos.shape[0] != text.context_length):
        raise OfficialCheckpointError(
            f"Base CLIP {clip_path} has a {emb.shape[0]}-token vocabulary and context length "
            f"{None if pos is None else pos.shape[0]}; the teacher needs {OPENAI_VOCAB_SIZE} and {text.context_length}."
        )
    return emb


def model_config(vision: VisionArch, text: TextArch) -> dict:
    """open_clip config dict (as in its model_configs/*.json) of the teacher's CLIP."""
    return {
        "embed_dim": vision.output_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": vision.image_size,
            "layers": vision.layers,
            "width": vision.width,
            "head_width": vision.width // vision.heads,
            "patch_size": vision.patch_size,
            "mlp_ratio": vision.mlp_ratio,
        },
        "text_cfg": {
            "context_length": text.context_length,
            "vocab_size": text.vocab_size,
            "width": text.width,
            "heads": text.heads,
            "layers": text.layers,
            "mlp_ratio": text.mlp_ratio,
        },
    }


def build_clip(state: dict, config: dict, token_embedding: torch.Tensor, source) -> nn.Module:
    """An open_clip CLIP holding the checkpoint's frozen towers and the base token embedding."""
    from open_clip.model import CLIP

    clip = CLIP(
        config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=config["text_cfg"], quick_gelu=True
    )
    visual, _ = split_prompts(state, "image_encoder.", "image_encoder.VPT", depth=0)  # backbone only
    text, _ = split_prompts(state, "text_encoder.", "prompt_learner.ctx", depth=0)
    full = {"visual." + k: v for k, v in visual.items()}
    full.update(text)
    full["token_embedding.weight"] = token_embedding
    full["logit_scale"] = need(state, "logit_scale", source).reshape(clip.logit_scale.shape)
    load_strict(clip, full, source, "CLIP towers")
    return clip.float().eval()


def teacher_prompt_state(state: dict, vision: VisionArch, text: TextArch) -> dict:
    """Our Teacher.prompt_state_dict() keys → the checkpoint's prompt tensors."""
    _, vision_prompts = split_prompts(state, "image_encoder.", "image_encoder.VPT", vision.depth)
    _, text_prompts = split_prompts(state, "text_encoder.", "prompt_learner.ctx", text.depth)
    out = {}
    if vision_prompts:
        out["image_encoder.shallow_prompt"] = vision_prompts[0]
        out.update({f"image_encoder.deep_prompts.{i}": p for i, p in enumerate(vision_prompts[1:])})
    if text_prompts:
        out["text_encoder.ctx"] = text_prompts[0]
        out.update({f"text_encoder.deep_prompts.{i}": p for i, p in enumerate(text_prompts[1:])})
    return {k: v.float() for k, v in out.items()}


def load_official_teacher(
    path: "str | os.PathLike",
    clip_weights: "str | os.PathLike | dict",
    classnames: Sequence[str],
    head_width: int = 64,
    clip_source: "str | None" = None,
) -> OfficialTeacher:
    """Build our prompted `Teacher` from an official PromptSRC teacher checkpoint, eval mode, fp32.

    Args:
        path: `model-best.pth.tar` / `model.pth.tar-20` (Dassl dict or bare state dict).
        clip_weights: the base OpenAI CLIP file (e.g. ViT-L-14.pt) or its state dict (`read_base_clip`),
            for the token embedding.
        classnames: the classes whose prompted text features `class_vectors()` returns, in order.
        head_width: attention head width; heads = width // head_width (OpenAI: 64).
        clip_source: how messages name `clip_weights` when it is a state dict.
    """
    from open_clip.tokenizer import SimpleTokenizer

    source = str(path)
    state = read_official_checkpoint(path)
    require_kind(state, "teacher", source)
    vision = vision_arch(state, "image_encoder.", source, head_width)
    text = text_arch(state, source, head_width)
    if text.depth == 0:
        raise OfficialCheckpointError(f"{source} has no prompt_learner.ctx, so it is not an IVLP teacher.")
    if vision.depth and vision.n_ctx != text.n_ctx:
        raise OfficialCheckpointError(
            f"{source} has {vision.n_ctx} visual and {text.n_ctx} text prompt tokens; only equal counts are supported."
        )
    if vision.output_dim != text.output_dim:
        raise OfficialCheckpointError(
            f"{source} projects images to {vision.output_dim}-d but text to {text.output_dim}-d."
        )
    base = clip_weights if isinstance(clip_weights, dict) else read_base_clip(clip_weights)
    named = clip_source or ("(state dict)" if isinstance(clip_weights, dict) else str(clip_weights))
    token_embedding = base_token_embedding(base, named, text, vision, source)
    config = model_config(vision, text)
    clip = build_clip(state, config, token_embedding, source)
    tokenizer = SimpleTokenizer(context_length=text.context_length)
    teacher = Teacher(
        clip,
        tokenizer,
        vision_depth=vision.depth,
        text_depth=text.depth,
        n_ctx=text.n_ctx,
        ctx_init=AUTHORS_CTX_INIT,
    )
    teacher.text_encoder.prompt_prefix = AUTHORS_CTX_INIT if text.n_ctx <= 4 else " ".join(["X"] * text.n_ctx)
    prompts = teacher_prompt_state(state, vision, text)
    expected = teacher.prompt_state_dict()
    if set(prompts) != set(expected) or any(prompts[k].shape != expected[k].shape for k in expected):
        raise OfficialCheckpointError(f"The prompts of {source} do not fit the derived teacher.")
    teacher.load_state_dict(prompts, strict=False)
    teacher.spec = f"official:{os.path.basename(str(path))}"
    return OfficialTeacher(teacher.eval(), classnames, config, source).eval()
