"""Label metrics: top-1 accuracy, harmonic mean, base-to-novel scoring (pure PyTorch)."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of [B, N] logits against [B] labels."""
    if logits.shape[0] == 0:
        return float("nan")
    return 100.0 * (logits.argmax(dim=-1) == labels).float().mean().item()


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·b·n / (b + n); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def cosine_logits(features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    """features [B, d] · class vectors [N, d]ᵀ → [B, N] (the logit scale does not change an argmax)."""
    return features.float() @ class_vectors.float().t()


def base_novel_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_vectors: torch.Tensor,
    num_base: int,
    logits=cosine_logits,
) -> dict[str, float]:
    """docs/protocol.md base-to-novel: base-class images scored against class_vectors[:m] only, novel-class
    images against class_vectors[m:] (labels shifted by m). features [B, d] and class vectors [N, d]
    normalised; `logits(features, class_vectors)` is the model's classifier (a ComKD student's
    runs its EduAttention over the class set being scored)."""
    base = labels < num_base
    base_acc = accuracy(logits(features[base], class_vectors[:num_base]), labels[base])
    novel_acc = accuracy(logits(features[~base], class_vectors[num_base:]), labels[~base] - num_base)
    return {"base": base_acc, "novel": novel_acc, "hm": harmonic_mean(base_acc, novel_acc)}
