"""The loss section of a job, without torch (reading and validating a job file must not import it).

`LossConfig` says which terms a method uses and with which weights; `LOSS_PRESETS` are the methods
(`promptkd`, `kdpl`, `kdpl_ca`, `comkd`); `losses.compute_loss` combines the terms of a config.
"""

from __future__ import annotations

from dataclasses import dataclass

KD_NORMALIZATIONS = ("authors", "batchmean")
FEATURE_LOSSES = ("l1", "mse")
KD_KINDS = ("kl", "symmetric_kl", "none")
FEATURE_KINDS = ("none", *FEATURE_LOSSES)
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
    edu_attention: bool = (
        False  # ComKD-CLIP: student logits through its EduAttention (width: student.edu_attention_width)
    )

    def __post_init__(self):
        checks = [
            ("kd", self.kd, KD_KINDS),
            ("normalization", self.normalization, KD_NORMALIZATIONS),
            ("feature", self.feature, FEATURE_KINDS),
            ("teacher_scale", self.teacher_scale, TEACHER_SCALES),
        ]
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
    "comkd": LossConfig(ifalign_weight=1.0, edu_attention=True),
}
