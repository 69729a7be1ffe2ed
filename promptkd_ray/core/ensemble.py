"""Teacher ensembles (ours, not in the papers): several teachers' logits combined into one target.

    t_i = scale_i · u_i · W_iᵀ                 # member i's logits [B, N]: its own features, class
                                               # vectors (its text tower) and logit scale
    p   = Σ_i w_i · softmax(t_i / T)           # the combined teacher distribution [B, N]
    mean:        w_i = 1 / M
    confidence:  w_i = c_i / Σ_j c_j,  c_i = max_n softmax(t_i / T)   (per image)

`p` replaces softmax(t / T) in the KD term (`losses.kd_kl`); KDPL's symmetric KL uses log p at T = 1
(`log_probs`: a log-sum-exp over the members, so log p of one member is its log-softmax exactly), and
KDPL-CA picks its top-K classes from p at T = 1. An ensemble of one teacher is its teacher bit for bit
(w = 1 exactly), so the single-teacher losses are this module's special case, not a separate rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

COMBINE_RULES = ("mean", "confidence")


@dataclass(frozen=True)
class Teacher:
    """One member of an ensemble, as a step sees it."""

    features: torch.Tensor  # [B, d_i] the member's normalised image features of the batch's views
    class_vectors: torch.Tensor  # [N, d_i] the member's class vectors (its own text tower)
    logit_scale: float  # the member's exp'd logit scale (KDPL: replaced by the student's)


@dataclass(frozen=True)
class EnsembleLogits:
    """The members' logits ([B, N] each, the same classes in the same order) and the rule that combines
    them. Indexes like a [B, N] tensor (`ensemble[:, keep]` keeps those classes of every member)."""

    logits: tuple  # of [B, N] tensors, the job's own teacher first
    combine: str = "mean"  # "mean" or "confidence"

    def __post_init__(self):
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got {self.combine!r}.")
        if not self.logits or any(t.dim() != 2 or t.shape != self.logits[0].shape for t in self.logits):
            shapes = [tuple(t.shape) for t in self.logits]
            raise ValueError(f"an ensemble needs one or more [B, N] logits of one shape, got {shapes}.")

    @property
    def shape(self) -> torch.Size:
        return self.logits[0].shape

    def __getitem__(self, index) -> "EnsembleLogits":
        return EnsembleLogits(tuple(t[index] for t in self.logits), self.combine)

    def weights(self, probs: list) -> torch.Tensor:
        """w [M, B, 1] of the members' distributions `probs` ([B, N] each); Σ_i w_i = 1 per image."""
        if self.combine == "mean":
            return torch.full((len(probs), probs[0].shape[0], 1), 1.0 / len(probs), device=probs[0].device)
        confidence = torch.stack([p.max(dim=-1).values for p in probs])  # [M, B]
        return (confidence / confidence.sum(dim=0, keepdim=True)).unsqueeze(-1)

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        """p = Σ_i w_i · softmax(t_i / T): [B, N], no gradient through the teachers."""
        members = [F.softmax(t.detach().float() / temperature, dim=-1) for t in self.logits]
        return (self.weights(members) * torch.stack(members)).sum(dim=0)

    def log_probs(self) -> torch.Tensor:
        """log p at T = 1: log Σ_i exp(log w_i + log_softmax(t_i)), [B, N] (KDPL's symmetric KL)."""
        logs = [F.log_softmax(t.detach().float(), dim=-1) for t in self.logits]
        log_w = self.weights([lp.exp() for lp in logs]).log()
        return torch.logsumexp(log_w + torch.stack(logs), dim=0)

    def argmax(self, dim: int = -1) -> torch.Tensor:
        """The combined distribution's top-1 class per image (T = 1)."""
        return self.probs().argmax(dim)
