"""One distillation step in plain PyTorch: the unit that the Ray training loop repeats.

    u_s = student(images)                     # L2-normalised projected student features [B, d]
    s   = scale_s · u_s · Wᵀ                  # student logits [B, N], W = class vectors
    t   = scale_t · u_t · Wᵀ                  # teacher logits from stored teacher features u_t
    loss = KD(s, t) (+ feature terms)         # see LossConfig and losses.py

The teacher never runs here: it emitted u_t upstream (online teacher pool or soft-label cache).
`scale_t` is the teacher's logit scale (PromptKD) or the student's (KDPL: `teacher_scale="student"`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import losses

KD_KINDS = ("kl", "symmetric_kl", "none")
FEATURE_KINDS = ("none", "l1", "mse")
TEACHER_SCALES = ("teacher", "student")


@dataclass(frozen=True)
class LossConfig:
    kd: str = "kl"  # "kl" (PromptKD), "symmetric_kl" (KDPL) or "none"
    temperature: float = 1.0  # T of the KL (PromptKD: 1)
    normalization: str = "authors"  # "authors" = sum/(B·N), or "batchmean" = sum/B
    kd_weight: float = 1000.0  # multiplies the KD term (authors: 1000; 200 for Aircraft, Flowers, DTD)
    feature: str = "none"  # extra feature loss between u_s and u_t: "none", "l1" or "mse" (Table 4)
    feature_weight: float = 1.0  # weight of the feature loss
    ifalign_weight: float = 0.0  # ComKD-CLIP IFAlign weight (0 = off; comkd preset: 1)
    class_agnostic_k: int = 0  # KDPL-CA: keep the top-K batch-mean teacher classes (0 = all classes)
    teacher_scale: str = "teacher"  # teacher logits use the "teacher"'s or the "student"'s logit scale

    def __post_init__(self):
        checks = [("kd", self.kd, KD_KINDS), ("normalization", self.normalization, losses.KD_NORMALIZATIONS),
                  ("feature", self.feature, FEATURE_KINDS), ("teacher_scale", self.teacher_scale, TEACHER_SCALES)]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"loss.{name} must be one of {allowed}, got {value!r}.")
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}.")
        if self.class_agnostic_k < 0:
            raise ValueError(f"loss.class_agnostic_k must be ≥ 0, got {self.class_agnostic_k}.")


LOSS_PRESETS = {
    "promptkd": LossConfig(),
    "kdpl": LossConfig(kd="symmetric_kl", kd_weight=1.0, teacher_scale="student"),
    "kdpl_ca": LossConfig(kd="symmetric_kl", kd_weight=1.0, teacher_scale="student", class_agnostic_k=1000),
    "comkd": LossConfig(ifalign_weight=1.0),
}


def compute_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_features: torch.Tensor,
                 teacher_features: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts. logits [B, N]; features [B, d] (normalised)."""
    if cfg.class_agnostic_k:
        keep = losses.class_agnostic_topk(teacher_logits, cfg.class_agnostic_k)
        student_logits, teacher_logits = student_logits[:, keep], teacher_logits[:, keep]
    parts: dict[str, torch.Tensor] = {}
    if cfg.kd == "kl":
        parts["kd"] = losses.kd_kl(student_logits, teacher_logits, cfg.temperature, cfg.normalization, cfg.kd_weight)
    elif cfg.kd == "symmetric_kl":
        parts["kd"] = cfg.kd_weight * losses.symmetric_kl(student_logits, teacher_logits)
    if cfg.feature != "none":
        parts["feature"] = cfg.feature_weight * losses.feature_loss(student_features, teacher_features, cfg.feature)
    if cfg.ifalign_weight:
        parts["ifalign"] = cfg.ifalign_weight * losses.ifalign(student_features, teacher_features)
    if not parts:
        raise ValueError("The loss config enables no term (kd='none', feature='none', ifalign_weight=0).")
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def teacher_logits(teacher_features: torch.Tensor, class_vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · u_t · Wᵀ: [B, d] × [N, d] → [B, N] (float32)."""
    return scale * teacher_features.float() @ class_vectors.float().t()


def distill_step(student: torch.nn.Module, images: torch.Tensor, teacher_features: torch.Tensor,
                 class_vectors: torch.Tensor, optimizer: torch.optim.Optimizer, loss_cfg: LossConfig,
                 teacher_logit_scale: float, student_logit_scale: float | None = None,
                 autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """One optimiser step on one batch.

    Args:
        student: a `Student` (or DDP around one); its forward(images, W, return_features=True)
            gives (logits [B, N], features [B, d]).
        images: [B, 3, H, W] CLIP-normalised views; teacher_features: [B, d] the teacher's
            normalised features of the *same* views; class_vectors: W [N, d].
        teacher_logit_scale / student_logit_scale: exp'd scales; with `teacher_scale="student"` the
            teacher logits use the student's.
        autocast_dtype: e.g. torch.bfloat16 on GPU; None = full precision.
    Returns:
        floats: loss, its parts, and `agreement` (student–teacher top-1 agreement, percent).
    """
    student.train()
    device_type = images.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        s_logits, s_features = student(images, class_vectors, return_features=True)
    s_logits, s_features = s_logits.float(), s_features.float()
    scale = teacher_logit_scale
    if loss_cfg.teacher_scale == "student":
        scale = student_logit_scale if student_logit_scale is not None else _module(student).logit_scale.item()
    t_logits = teacher_logits(teacher_features, class_vectors, scale)
    loss, parts = compute_loss(s_logits, t_logits, s_features, teacher_features.float(), loss_cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    agreement = 100.0 * (s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean().item()
    return {"loss": float(loss.detach()), **parts, "agreement": agreement}


def _module(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
