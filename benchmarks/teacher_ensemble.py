"""A teacher ensemble scored as a classifier: the members' combined distribution, zero-shot.

`patient_teaching.py --members M` distils a student from a teacher ensemble; this module scores the
ensemble itself on the same tests as every reference — base-to-novel on the job's domain and all classes
of the neon domain — so a student's gain can be read against what its combined teacher knows.

    p(c | x) = Σ_i w_i · softmax(scale_i · u_i(x) · W_i[c]ᵀ)      (`core.ensemble.EnsembleLogits.probs`, T = 1)

Each member's features u_i are its own image tower's of the test transform, its class vectors W_i its own
text tower's of the domain's class names (the job's templates), base and novel images scored against
their own half of the classes (docs/protocol.md), exactly as one teacher is scored.
"""

from __future__ import annotations

import torch


def ensemble_scores(teachers: list, doodles, neon, templates: str, combine: str) -> dict:
    """{base, novel, hm, neon} of the ensemble of `teachers` (ModelRefs, the job's first) combined by
    `combine` ("mean" or "confidence") on `doodles` (base-to-novel) and `neon` (all its classes)."""
    from promptkd_ray.core.metrics import accuracy, base_novel_accuracy
    from promptkd_ray.data.splits import num_base_classes

    b2n = _stacked(teachers, doodles, templates)
    logits = _combined(b2n["dims"], b2n["scales"], combine)
    found = base_novel_accuracy(
        b2n["features"], b2n["labels"], b2n["vectors"], num_base_classes(len(doodles.classnames)), logits
    )
    cross = _stacked(teachers, neon, templates)
    neon_logits = _combined(cross["dims"], cross["scales"], combine)(cross["features"], cross["vectors"])
    return {**{k: found[k] for k in ("base", "novel", "hm")}, "neon": accuracy(neon_logits, cross["labels"])}


def _stacked(teachers: list, splits, templates: str) -> dict:
    """Every member's test features and class vectors of `splits`, side by side ([B, Σ d_i], [N, Σ d_i])."""
    from promptkd_ray.core.classvectors import compute_class_vectors
    from promptkd_ray.orchestration.inference import Encoding, encode_items

    paths, labels = [it.path for it in splits.test], [it.label for it in splits.test]
    features, vectors, dims, scales, kept = [], [], [], [], None
    for teacher in teachers:
        model = teacher.build("cpu")
        cv = compute_class_vectors(model, list(splits.classnames), templates=templates)
        encoded = encode_items(teacher, paths, labels, Encoding(use_ray=False, batch_size=128))
        if encoded.unreadable or (kept is not None and not torch.equal(kept, encoded.labels)):
            raise SystemExit(f"error: {splits.name}'s test images did not all decode for {teacher.source}.")
        kept = encoded.labels
        features.append(encoded.features)
        vectors.append(cv.vectors)
        dims.append(cv.dim)
        scales.append(cv.logit_scale)
    return {
        "features": torch.cat(features, 1),
        "vectors": torch.cat(vectors, 1),
        "labels": kept,
        "dims": dims,
        "scales": scales,
    }


def _combined(dims: list, scales: list, combine: str):
    """logits(features, vectors) of the side-by-side members: log p of their combined distribution."""
    from promptkd_ray.core.ensemble import EnsembleLogits

    def logits(features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        parts = zip(features.float().split(dims, 1), vectors.float().split(dims, 1), scales)
        members = tuple(scale * u @ w.t() for u, w, scale in parts)
        return EnsembleLogits(members, combine).probs().log()

    return logits
