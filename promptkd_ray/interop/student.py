"""Load an official PromptKD student checkpoint (`VLPromptLearner/model-best.pth.tar`) as our `Student`.

Key mapping (authors → ours), after `module.` is stripped:
    image_encoder.VPT                                   → image_encoder.shallow_prompt
    image_encoder.transformer.resblocks.{i}.VPT_shallow → image_encoder.deep_prompts.{i-1}
    image_encoder.<other>  (OpenAI visual names)        → image_encoder.visual.<other>
    VPT_image_trans.conv1.{0,1,3}.*                     → projector.conv1.{0,1,3}.*  (BN running stats too)
    logit_scale (log)                                   → Student.logit_scale = exp(logit_scale)

The checkpoint holds the whole frozen image tower, so no base CLIP file is needed: the architecture
is read from shapes (`checkpoint.vision_arch`) and the backbone weights come from the checkpoint.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from ..core.models.student import Student
from .checkpoint import (
    OfficialCheckpointError,
    VisionArch,
    load_strict,
    need,
    read_official_checkpoint,
    require_kind,
    split_prompts,
    vision_arch,
)

PROJECTOR_PREFIX = "VPT_image_trans."


class OfficialStudent(nn.Module):
    """An imported PromptKD student, eval mode: `encode_image` → L2-normalised [B, d_teacher]."""

    def __init__(self, student: Student, arch: VisionArch, source: str):
        super().__init__()
        self.student = student
        self.arch = arch
        self.source = source
        self.logit_scale = float(student.logit_scale)  # already exponentiated

    @property
    def teacher_dim(self) -> int:
        return self.student.teacher_dim

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W], CLIP-normalised → [B, d_teacher], L2-normalised."""
        return self.student.encode_image(images)

    def forward(self, images: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """→ logits [B, N] = logit_scale · encode_image(images) · class_vectorsᵀ."""
        return self.logit_scale * self.encode_image(images) @ class_vectors.t().float()


def projector_dims(state: dict, source) -> tuple[int, int]:
    """(d_student, d_teacher) of the authors' Conv-BN-ReLU-Conv projector."""
    first = need(state, PROJECTOR_PREFIX + "conv1.0.weight", source)  # [d_t, d_s, 1, 1]
    last = need(state, PROJECTOR_PREFIX + "conv1.3.weight", source)  # [d_t, d_t, 1, 1]
    if first.dim() != 4 or last.shape[:2] != (first.shape[0], first.shape[0]):
        raise OfficialCheckpointError(
            f"The projector of {source} has shapes {tuple(first.shape)} and {tuple(last.shape)}; "
            "expected Conv2d(d_s, d_t, 1) and Conv2d(d_t, d_t, 1)."
        )
    return int(first.shape[1]), int(first.shape[0])


def student_state(state: dict, backbone_prompts: list, logit_scale: float) -> dict:
    """Our Student's trainable state dict (prompts, projector with BN stats, logit scale)."""
    out = {}
    if backbone_prompts:
        out["image_encoder.shallow_prompt"] = backbone_prompts[0]
        out.update({f"image_encoder.deep_prompts.{i}": p for i, p in enumerate(backbone_prompts[1:])})
    for key, value in state.items():
        if key.startswith(PROJECTOR_PREFIX):
            out["projector." + key[len(PROJECTOR_PREFIX) :]] = value
    bn = "projector.conv1.1.num_batches_tracked"
    out.setdefault(bn, torch.tensor(0, dtype=torch.long))  # older BatchNorm checkpoints lack it
    out["logit_scale"] = torch.tensor(logit_scale)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def load_official_student(path: "str | os.PathLike", head_width: int = 64) -> OfficialStudent:
    """Build our `Student` from an official PromptKD student checkpoint, eval mode, fp32.

    Args:
        path: `model-best.pth.tar` / `model.pth.tar-N` (Dassl dict or bare state dict).
        head_width: attention head width; heads = width // head_width (OpenAI ViTs: 64).
    """
    source = str(path)
    state = read_official_checkpoint(path)
    require_kind(state, "student", source)
    arch = vision_arch(state, "image_encoder.", source, head_width)
    d_student, d_teacher = projector_dims(state, source)
    if d_student != arch.output_dim:
        raise OfficialCheckpointError(
            f"The projector of {source} takes {d_student}-d features, but its image tower outputs {arch.output_dim}-d."
        )
    backbone, prompts = split_prompts(state, "image_encoder.", "image_encoder.VPT", arch.depth)
    visual = arch.build()
    load_strict(visual, backbone, source, "image tower")
    logit_scale = math.exp(float(need(state, "logit_scale", source).float().reshape(-1)[0]))
    student = Student(
        visual,
        teacher_dim=d_teacher,
        n_ctx=arch.n_ctx or 4,
        depth=arch.depth,
        projector="mlp2",
        logit_scale=logit_scale,
    )
    try:
        student.load_trainable_state_dict(student_state(state, prompts, logit_scale))
    except ValueError as exc:
        raise OfficialCheckpointError(f"{source}: {exc}") from exc
    return OfficialStudent(student.eval(), arch, source).eval()
