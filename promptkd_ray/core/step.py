"""One distillation step in plain PyTorch: the unit that the training loop repeats.

    u_s = student(images)                     # L2-normalised projected student features [B, d]
    s   = scale_s · u_s · Wᵀ                  # student logits [B, N], W = class vectors
    t   = scale_t · u_t · Wᵀ                  # teacher logits from stored teacher features u_t
    loss = KD(s, t) (+ feature terms)         # `losses.compute_loss` of the job's LossConfig

The teacher never runs here: it emitted u_t upstream (the teacher pool, or a stored cache).
`scale_t` is the teacher's logit scale (PromptKD) or the student's (KDPL: `teacher_scale="student"`);
`teacher_scale` is the one place that rule is written.

`ensemble_step` is the same step against several teachers (ours, not in the papers): member i's
logits t_i = scale_i · u_i · W_iᵀ with its own features, class vectors and scale, combined into one
target (`ensemble.EnsembleLogits`); the student still scores the job's class vectors W, and the
feature terms see the first member's (the job's own teacher's) features.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import DivergedError
from .ensemble import EnsembleLogits, Teacher
from .losses import LossConfig, compute_loss


def teacher_logits(teacher_features: torch.Tensor, class_vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · u_t · Wᵀ: [B, d] × [N, d] → [B, N] (float32)."""
    return scale * teacher_features.float() @ class_vectors.float().t()


def teacher_scale(loss: LossConfig, teacher_logit_scale: float, student: torch.nn.Module) -> float:
    """The logit scale of the teacher's logits: the teacher's own, or (KDPL) the student's."""
    if loss.teacher_scale == "student":
        return float(getattr(student, "module", student).logit_scale)
    return float(teacher_logit_scale)


def autocast_dtype(precision: str, device: str) -> Optional[torch.dtype]:
    """ "auto" → bf16 on GPU, none on CPU; "bf16" / "fp16" → that dtype; "fp32" → none."""
    if precision == "auto":
        return torch.bfloat16 if device == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def diverged(loss: float, terms: str, where: str = "") -> DivergedError:
    """The error of a non-finite loss `loss` (`terms`: its parts, as text), said at `where` if given
    (e.g. "epoch 1 of 8, step 11 of worker 0")."""
    subject = f"At {where}, the training loss" if where else "The training loss"
    error = DivergedError(
        f"{subject} became {loss} ({terms}): the student diverged, so the run stops rather than train on "
        "at chance; lower train.lr or set train.grad_clip_norm, say to 1."
    )
    error.loss, error.terms = loss, terms
    return error


def distill_step(
    student: torch.nn.Module,
    images: torch.Tensor,
    teacher_features: torch.Tensor,
    class_vectors: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_cfg: LossConfig,
    teacher_logit_scale: float,
    autocast: Optional[torch.dtype] = None,
) -> dict[str, float]:
    """One optimiser step on one batch.

    Args:
        student: a `Student` (or DDP around one); its forward(images, W, return_features=True)
            gives (logits [B, N], features [B, d]).
        images: [B, 3, H, W] CLIP-normalised views; teacher_features: [B, d] the teacher's
            normalised features of the *same* views; class_vectors: W [N, d].
        teacher_logit_scale: the teacher's exp'd logit scale (KDPL replaces it by the student's).
        autocast: e.g. torch.bfloat16 on GPU; None = full precision.
    Returns:
        floats: loss, its parts, and `agreement` (student–teacher top-1 agreement, percent).
    Raises:
        DivergedError: the loss is NaN or infinite (read after the step, where it is read anyway, so
            the check costs no extra synchronisation; the caller stops, so the spoiled weights are
            never saved).
    """
    t_logits = teacher_logits(
        teacher_features, class_vectors, teacher_scale(loss_cfg, teacher_logit_scale, student)
    )
    return _step(student, images, class_vectors, optimizer, loss_cfg, t_logits, teacher_features, autocast)


def ensemble_step(
    student: torch.nn.Module,
    images: torch.Tensor,
    teachers: Sequence[Teacher],
    combine: str,
    class_vectors: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_cfg: LossConfig,
    autocast: Optional[torch.dtype] = None,
) -> dict[str, float]:
    """`distill_step` against an ensemble: `teachers` (`ensemble.Teacher`: features [B, d_i], class
    vectors [N, d_i], logit scale), the job's own first, combined by `combine` ("mean" or
    "confidence"); `class_vectors`: W [N, d] the student scores. One member gives `distill_step`'s
    loss and gradients exactly. Returns and raises as `distill_step`; `agreement` is with the
    combined distribution's top-1."""
    logits = tuple(
        teacher_logits(t.features, t.class_vectors, teacher_scale(loss_cfg, t.logit_scale, student))
        for t in teachers
    )
    target = EnsembleLogits(logits, combine)
    return _step(student, images, class_vectors, optimizer, loss_cfg, target, teachers[0].features, autocast)


def _step(student, images, class_vectors, optimizer, loss_cfg, t_logits, teacher_features, autocast):
    """The student's forward, the loss against `t_logits` ([B, N] or `EnsembleLogits`), the update."""
    student.train()
    with torch.autocast(images.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        s_logits, s_features = student(images, class_vectors, return_features=True)
    s_logits, s_features = s_logits.float(), s_features.float()
    loss, parts = compute_loss(s_logits, t_logits, s_features, teacher_features.float(), loss_cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise diverged(value, ", ".join(f"{name} {part:.4g}" for name, part in parts.items()))
    agreement = 100.0 * (s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean().item()
    return {"loss": value, **parts, "agreement": agreement}
