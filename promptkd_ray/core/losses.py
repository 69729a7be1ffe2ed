"""Distillation losses as pure functions.

Every loss takes plain tensors and returns a scalar tensor; nothing here knows about models,
optimisers or Ray. Shapes use B = batch, N = number of classes, D = feature dimension.

- `kd_kl`          PromptKD: KL(teacher ‖ student) at temperature T, times T², times a weight.
                   `normalization="authors"` divides the summed KL by B·N (the official code's
                   `reduction="sum") / stu_logits.numel()`); `"batchmean"` divides by B only.
- `symmetric_kl`   KDPL: ½·KL(t‖s) + ½·KL(s‖t), each batch-mean, no temperature.
- `feature_loss`   L1 / MSE between student and teacher features (PromptKD Table 4 ablation).
- `ifalign`        ComKD-CLIP: ‖μ_s − μ_t‖₁ + ‖σ²_s − σ²_t‖₁ over batch statistics.
- `class_agnostic_topk`  KDPL-CA: the K classes with the largest batch-mean teacher probability.

`compute_loss` combines the terms a `LossConfig` (`loss_config.py`, the methods' presets) enables.
Wherever a teacher's logits go, an `ensemble.EnsembleLogits` may go instead (ours, not in the papers):
its combined distribution p replaces softmax(t / T) (`teacher_probs`, `teacher_log_probs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ensemble import EnsembleLogits
from .loss_config import FEATURE_LOSSES, KD_NORMALIZATIONS, LossConfig


def compute_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of the terms `cfg` enables, and each term as a float. logits [B, N] (the teacher's
    may be an `EnsembleLogits`); features [B, d] (normalised; an ensemble's are its first member's).
    KDPL-CA first restricts both logit sets to the teacher's top-K classes."""
    if cfg.class_agnostic_k:
        keep = class_agnostic_topk(teacher_logits, cfg.class_agnostic_k)
        student_logits, teacher_logits = student_logits[:, keep], teacher_logits[:, keep]
    parts: dict[str, torch.Tensor] = {}
    if cfg.kd == "kl":
        parts["kd"] = kd_kl(student_logits, teacher_logits, cfg.temperature, cfg.normalization, cfg.kd_weight)
    elif cfg.kd == "symmetric_kl":
        parts["kd"] = cfg.kd_weight * symmetric_kl(student_logits, teacher_logits)
    if cfg.feature != "none":
        parts["feature"] = cfg.feature_weight * feature_loss(student_features, teacher_features, cfg.feature)
    if cfg.ifalign_weight:
        parts["ifalign"] = cfg.ifalign_weight * ifalign(student_features, teacher_features)
    if not parts:
        raise ValueError("The loss config enables no term (kd='none', feature='none', ifalign_weight=0).")
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    normalization: str = "authors",
    weight: float = 1.0,
) -> torch.Tensor:
    """PromptKD's KD loss.

    Args:
        student_logits: [B, N] student logits.
        teacher_logits: [B, N] teacher logits (no gradient is taken through them), or an
            `EnsembleLogits` whose combined distribution p replaces softmax(t/T).
        temperature: T; both logit sets are divided by T and the KL is multiplied by T².
        normalization: "authors" → sum / (B·N); "batchmean" → sum / B.
        weight: multiplies the result (the authors' KD_WEIGHT: 1000, or 200 for some datasets).

    Returns:
        scalar tensor: weight · T² · KL(softmax(t/T) ‖ softmax(s/T)) / norm.
    """
    _check_pair(student_logits, teacher_logits, "logits")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if normalization not in KD_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {KD_NORMALIZATIONS}, got {normalization!r}.")
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    p_teacher = teacher_probs(teacher_logits, t)
    kl_sum = F.kl_div(log_p_student, p_teacher, reduction="sum")
    denom = student_logits.numel() if normalization == "authors" else student_logits.shape[0]
    return weight * kl_sum * (t * t) / denom


def symmetric_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KDPL's symmetric KL: ½·KL(t‖s) + ½·KL(s‖t), each averaged over the batch.

    Args:
        student_logits, teacher_logits: [B, N] (or an `EnsembleLogits`: its log p at T = 1). The
            teacher side carries no gradient.
    Returns:
        scalar tensor.
    """
    _check_pair(student_logits, teacher_logits, "logits")
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = teacher_log_probs(teacher_logits)
    kl_t_s = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    kl_s_t = F.kl_div(log_t, log_s, reduction="batchmean", log_target=True)
    return 0.5 * kl_t_s + 0.5 * kl_s_t


def feature_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, kind: str = "l1"
) -> torch.Tensor:
    """Feature-matching loss between [B, D] student and teacher features (mean reduction)."""
    _check_pair(student_features, teacher_features, "features")
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"feature loss must be one of {FEATURE_LOSSES}, got {kind!r}.")
    target = teacher_features.detach().float()
    if kind == "l1":
        return F.l1_loss(student_features.float(), target)
    return F.mse_loss(student_features.float(), target)


def ifalign(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """ComKD-CLIP's IFAlign: ‖μ_s − μ_t‖₁ + ‖σ²_s − σ²_t‖₁.

    μ and σ² are per-dimension batch statistics of [B, D] features (σ² is the biased variance,
    i.e. divided by B); ‖·‖₁ sums absolute values over D. Zero when the statistics are equal.
    """
    _check_pair(student_features, teacher_features, "features")
    s = student_features.float()
    t = teacher_features.detach().float()
    mean_term = (s.mean(dim=0) - t.mean(dim=0)).abs().sum()
    var_term = (s.var(dim=0, unbiased=False) - t.var(dim=0, unbiased=False)).abs().sum()
    return mean_term + var_term


def class_agnostic_topk(teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
    """KDPL-CA class selection: indices [K] of the classes with the largest batch-mean teacher
    probability (softmax over [B, N] teacher logits, or an ensemble's combined p, mean over B, top-K)."""
    if len(teacher_logits.shape) != 2:
        raise ValueError(f"teacher logits must be [B, N], got shape {tuple(teacher_logits.shape)}.")
    k = min(k, teacher_logits.shape[1])
    mean_prob = teacher_probs(teacher_logits).mean(dim=0)
    return mean_prob.topk(k).indices


def teacher_probs(teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """softmax(t / T) of [B, N] teacher logits, or an ensemble's combined p; no gradient."""
    if isinstance(teacher_logits, EnsembleLogits):
        return teacher_logits.probs(temperature)
    return F.softmax(teacher_logits.detach().float() / temperature, dim=-1)


def teacher_log_probs(teacher_logits) -> torch.Tensor:
    """log_softmax(t) of [B, N] teacher logits, or an ensemble's log p (T = 1); no gradient."""
    if isinstance(teacher_logits, EnsembleLogits):
        return teacher_logits.log_probs()
    return F.log_softmax(teacher_logits.detach().float(), dim=-1)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:  # b: a tensor, or an EnsembleLogits (its members' shape)
        raise ValueError(
            f"student and teacher {what} must both be [B, N] of the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}."
        )
