"""The PromptKD student: prompted image tower → projector → L2 norm; frozen logit scale.

Only the prompts and the projector train (and, for ComKD-CLIP, its EduAttention); the backbone and
the logit scale are frozen. The student never runs a text encoder: its classifier is the teacher's
class vectors W [N, d_t]: `logits(u_s, W)` = scale · f · Wᵀ, where f = u_s, or f = EduAttention(u_s, W)
when the student has one (`edu_attention.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .edu_attention import EduAttention
from .prompted_vit import PromptedVisionTransformer

PROJECTORS = ("mlp2", "linear", "identity")


class ConvMLPProjector(nn.Module):
    """The authors' `VPT_image_trans`: Conv2d(d_s, d_t, 1) → BatchNorm2d(d_t) → ReLU → Conv2d(d_t, d_t, 1),
    applied to a feature as [B, C, 1, 1]. Module indices 0, 1, 3 match their `conv1.{0,1,3}` keys."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, kernel_size=1),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_dim] → [B, out_dim]."""
        return self.conv1(x[:, :, None, None])[:, :, 0, 0]


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "mlp2":
        return ConvMLPProjector(in_dim, out_dim)
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(
                f"projector 'identity' needs equal student and teacher dims, got {in_dim} and {out_dim}."
            )
        return nn.Identity()
    raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}.")


class Student(nn.Module):
    """Args:
    visual: the student CLIP's open_clip VisionTransformer (frozen here).
    teacher_dim: dimension d_t of the teacher features / class vectors.
    n_ctx, depth: visual prompt tokens per layer and number of prompted layers.
    projector: "mlp2" (authors), "linear" or "identity".
    logit_scale: the student's (already exponentiated) logit scale, frozen.
    edu_attention_width: C of a ComKD-CLIP EduAttention before the classifier (0 = none).
    """

    def __init__(
        self,
        visual: nn.Module,
        teacher_dim: int,
        n_ctx: int = 4,
        depth: int = 9,
        projector: str = "mlp2",
        logit_scale: float = 100.0,
        edu_attention_width: int = 0,
    ):
        super().__init__()
        for p in visual.parameters():
            p.requires_grad_(False)
        self.image_encoder = PromptedVisionTransformer(visual, n_ctx=n_ctx, depth=depth)
        self.projector = build_projector(projector, self.image_encoder.output_dim, teacher_dim)
        self.projector_kind = projector
        self.teacher_dim = teacher_dim
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.edu_attention = EduAttention(teacher_dim, edu_attention_width) if edu_attention_width else None

    @property
    def edu_attention_width(self) -> int:
        return self.edu_attention.width if self.edu_attention is not None else 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        edu = list(self.edu_attention.parameters()) if self.edu_attention is not None else []
        return self.image_encoder.prompt_parameters() + list(self.projector.parameters()) + edu

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what trains (prompts, projector incl. BatchNorm running stats): the student artifact."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("image_encoder.visual.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        theirs = state["edu_attention.query.weight"].shape[0] if "edu_attention.query.weight" in state else 0
        if theirs != self.edu_attention_width:
            raise ValueError(
                f"The student state has {'an EduAttention of width ' + str(theirs) if theirs else 'no EduAttention'}"
                f" (ComKD-CLIP), but this student has "
                f"{'one of width ' + str(self.edu_attention_width) if self.edu_attention_width else 'none'}."
            )
        if missing or unexpected or wrong:
            raise ValueError(
                "The student state does not fit this student (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]})."
            )
        self.load_state_dict(state, strict=False)

    def train(self, mode: bool = True) -> "Student":
        super().train(mode)
        self.image_encoder.visual.eval()  # frozen backbone: no dropout / patch dropout
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] → L2-normalised projected features [B, teacher_dim]."""
        features = self.image_encoder(images)  # shape = [B, d_s]
        return F.normalize(self.projector(features.float()), dim=-1)

    def logits(self, features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """Projected features u_s [B, teacher_dim] against class vectors [N, teacher_dim] → logits
        [B, N] (through EduAttention when the student has one)."""
        if self.edu_attention is not None:
            features = self.edu_attention(features, class_vectors)
        return self.logit_scale * features @ class_vectors.t().to(torch.float32)

    def forward(self, images: torch.Tensor, class_vectors: torch.Tensor, return_features: bool = False):
        """images [B, 3, H, W], class vectors [N, teacher_dim] (normalised) → logits [B, N]
        (and the normalised features u_s [B, teacher_dim] with return_features=True)."""
        features = self.encode_image(images)
        logits = self.logits(features, class_vectors)
        return (logits, features) if return_features else logits


def clip_logit_scale(clip: nn.Module) -> float:
    """exp(logit_scale) of an open_clip CLIP model, as a float."""
    return float(math.exp(float(clip.logit_scale.detach().reshape(-1)[0])))
