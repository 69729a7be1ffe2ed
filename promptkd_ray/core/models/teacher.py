"""The teacher: a CLIP image tower (optionally prompted) + text tower (optionally IVLP-prompted).

A zero-shot teacher has depth 0 on both towers and makes class vectors from one template or
an ensemble (features of each template L2-normalised, averaged, normalised again). A
PromptSRC-style teacher has prompts on both towers (docs/protocol.md, "Teacher") and makes class
vectors from its prompted text "a photo of a {classname}.".
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..templates import resolve_templates
from .prompted_text import DEFAULT_CTX_INIT, PromptedTextEncoder
from .prompted_vit import PromptedVisionTransformer
from .student import clip_logit_scale


class Teacher(nn.Module):
    """Args:
    clip: an open_clip CLIP model (its weights are frozen here).
    tokenizer: its open_clip tokenizer.
    vision_depth, text_depth: prompted layers per tower (0 = zero-shot tower).
    n_ctx: prompt tokens per layer (both towers).
    ctx_init: initial words of the text context ("a photo of a").
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        vision_depth: int = 0,
        text_depth: int = 0,
        n_ctx: int = 4,
        ctx_init: str = DEFAULT_CTX_INIT,
    ):
        super().__init__()
        for p in clip.parameters():
            p.requires_grad_(False)
        self.image_encoder = PromptedVisionTransformer(clip.visual, n_ctx=n_ctx, depth=vision_depth)
        self.text_encoder = PromptedTextEncoder(
            clip, tokenizer, n_ctx=n_ctx, depth=text_depth, ctx_init=ctx_init
        )
        self.register_buffer("logit_scale", torch.tensor(clip_logit_scale(clip)))

    @property
    def embed_dim(self) -> int:
        return int(self.image_encoder.output_dim)

    def prompt_parameters(self) -> list[nn.Parameter]:
        return self.image_encoder.prompt_parameters() + self.text_encoder.prompt_parameters()

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the learned prompt tensors (the teacher artifact's weights)."""
        keep = {id(p) for p in self.prompt_parameters()}
        return {k: v.detach() for k, v in self.named_parameters() if id(v) in keep}

    def train(self, mode: bool = True) -> "Teacher":
        super().train(mode)
        self.image_encoder.visual.eval()
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] → L2-normalised features [B, d]."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def encode_text(self, classnames: Sequence[str], templates="single") -> torch.Tensor:
        """Class names [N] → L2-normalised class vectors [N, d]. A prompted text tower uses its
        learned context (templates are ignored); a zero-shot one uses `templates`."""
        if self.text_encoder.depth > 0:
            return F.normalize(self.text_encoder.encode_prompted(classnames).float(), dim=-1)
        return self.text_encoder.encode_templates(classnames, resolve_templates(templates)).float()

    def logits(self, images: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """Teacher logits = exp(logit_scale) · û_t · Wᵀ, [B, N]."""
        return self.logit_scale * self.encode_image(images) @ class_vectors.t().float()
