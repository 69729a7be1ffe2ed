"""Evaluation: score models on a dataset's test split under a protocol (docs/protocol.md); `report.py`
writes the scores as a report.

    score(entries, dataset, protocol)   encode the test images with each model (Ray Data batch
                                        inference or in-process) → one Score per entry
    val_accuracy(job, student, …)       a student's top-1 on labelled few-shot val images (a sweep's
                                        teacher-choice metric; test labels are never read)

Protocols:

- base-to-novel: base = first ⌈N/2⌉ classes; base-class test images are scored against the base
  class vectors only, novel-class images against the novel ones; HM = 2bn/(b+n);
- cross-dataset: all classes of the target dataset;
- domain generalisation: ImageNet-V2/-Sketch/-A/-R scored against the ImageNet class vectors
  restricted (by class name) to the classes the variant has.
Results of several seeds are reported as mean ± std. No checkpoint is ever selected on test data:
each student given is evaluated as it is.

An unreadable test image (corrupt, truncated, not an image, or over the decode pixel limit)
changes the test set, so it is an error (`BadImageError`, one sentence naming the file) unless the
caller asks to skip such images; then their count is reported beside the score, and their names
and reasons under the table and in unreadable.csv.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .core.artifacts import ModelRef, read_student_info
from .core.classvectors import ClassVectors, check_class_vectors, compute_class_vectors, load_class_vectors
from .core.metrics import accuracy, base_novel_accuracy, cosine_logits
from .data.fewshot import sample_k_shot
from .data.sources import open_splits
from .data.splits import num_base_classes
from .errors import BadImageError, ClassVectorsError, ConfigError
from .orchestration.inference import Encoding, encode_items

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    dataset: str
    model: str  # e.g. "student", "teacher", "student zero-shot"
    seed: int
    metrics: dict  # {"base", "novel", "hm"} or {"accuracy"}
    unreadable: int = 0  # test images that could not be decoded and were left out (only when asked to skip)
    unreadable_files: tuple = ()  # their (path, reason), sorted by path


@dataclass(frozen=True)
class Entry:
    """One model to score: its name in the report, the model, and the class vectors it is scored
    against (None: class vectors its own text tower computes for the dataset's classes)."""

    name: str
    model: ModelRef
    class_vectors: Optional[ClassVectors] = None
    seed: int = 0


PROTOCOLS = ("base2novel", "cross", "dg")


def score(
    entries: Sequence[Entry],
    dataset,
    protocol: str = "base2novel",
    templates: str = "single",
    how: Encoding = Encoding(),
    skip_unreadable: bool = False,
) -> list[Score]:
    """Score each entry on `dataset`'s test split under `protocol` (base2novel, cross or dg), its
    images encoded `how` says (Ray Data or in-process, batch size, precision, decode options)."""
    paths, labels = [it.path for it in dataset.test], [it.label for it in dataset.test]
    scores = []
    for entry in entries:
        cv = entry.class_vectors
        if cv is None:
            cv = compute_class_vectors(
                entry.model.build(),
                list(dataset.classnames),
                templates=templates,
                teacher_spec=entry.model.spec,
            )
        if protocol == "dg":
            cv = restrict_by_name(cv, dataset.classnames)
        encoded = encode_items(
            entry.model,
            paths,
            labels,
            how,
            pack=getattr(dataset, "pack", ""),
        )  # a pack: `data.pack.PackedSplits`
        _check_readable(encoded.unreadable, len(paths), dataset.name, skip_unreadable)
        metrics = (base_to_novel if protocol == "base2novel" else all_classes)(
            encoded.features, encoded.labels, cv, dataset.classnames, entry.model.classifier()
        )
        scores.append(
            Score(
                dataset.name,
                entry.name,
                entry.seed,
                metrics,
                len(encoded.unreadable),
                tuple(sorted(encoded.unreadable.items())),
            )
        )
        log.info(
            "%s %s seed %d: %s",
            dataset.name,
            entry.name,
            entry.seed,
            {k: round(v, 2) for k, v in metrics.items()},
        )
    return scores


def class_vectors_for(
    student: str, dataset, given: Sequence[ClassVectors], protocol: str, cache: Optional[dict] = None
) -> ClassVectors:
    """The class vectors a student is scored against on `dataset`: a given set holding the dataset's
    classes (in order; for dg: holding them all, restricted later), else the dataset's class vectors
    computed by the teacher the student was distilled from (its artifact records it) with the same
    templates — how a student distilled on one dataset (or over a vocabulary) is scored on another."""
    names = tuple(dataset.classnames)
    for cv in given:
        if cv.classnames == names or (protocol == "dg" and set(names) <= set(cv.classnames)):
            return cv
    info = read_student_info(student)
    ref = info.extra.get("teacher_ref")
    if not ref:
        raise ClassVectorsError(
            f"No class vectors given hold the {len(names)} classes of {dataset.name}, and the student {student} "
            f"records no teacher to compute them with; pass --class-vectors with a file of {dataset.name}'s classes."
        )
    cache = {} if cache is None else cache
    key = (ref["kind"], ref["source"], names)
    if key not in cache:
        templates = list(info.extra.get("class_vectors_templates") or ["single"])
        teacher = ModelRef(ref["kind"], ref["source"])
        log.info(
            "class vectors of %s's %d classes from the student's teacher %s",
            dataset.name,
            len(names),
            ref["source"],
        )
        cache[key] = compute_class_vectors(
            teacher.build(),
            list(names),
            teacher_spec=teacher.spec,
            templates="single" if templates == ["prompted"] else templates,
        )
    return cache[key]


def _check_readable(unreadable: dict, total: int, dataset: str, skip: bool) -> None:
    if not unreadable:
        return
    path, reason = next(iter(sorted(unreadable.items())))
    if len(unreadable) >= total:
        raise BadImageError(
            f"All {total} test images of {dataset} are unreadable (first: {path}: {reason}); "
            "there is nothing to score."
        )
    if not skip:
        raise BadImageError(
            f"{len(unreadable)} of {total} test images of {dataset} are unreadable (first: {path}: "
            f"{reason}); fix them, or pass --skip-unreadable to score without them and report "
            "their count beside the score."
        )
    log.warning(
        "%d of %d test images of %s are unreadable and left out (first: %s)",
        len(unreadable),
        total,
        dataset,
        path,
    )


def base_to_novel(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_vectors: ClassVectors,
    classnames: Sequence[str],
    logits=cosine_logits,
) -> dict[str, float]:
    check_class_vectors(class_vectors, expected_classnames=classnames, source="class vectors")
    return base_novel_accuracy(
        features, labels, class_vectors.vectors, num_base_classes(len(classnames)), logits
    )


def all_classes(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_vectors: ClassVectors,
    classnames: Sequence[str],
    logits=cosine_logits,
) -> dict[str, float]:
    check_class_vectors(class_vectors, expected_classnames=classnames, source="class vectors")
    return {"accuracy": accuracy(logits(features, class_vectors.vectors), labels)}


def val_accuracy(
    data, seed: int, student: str, class_vectors: str, shots: int, precision: str, how=None
) -> float:
    """Top-1 % of the student artifact against `class_vectors` (a path) on `shots` labelled val images
    per base class of the job's `data`, among the base classes — the few-shot val Stage I uses; test
    labels are never read. `how`: how the images are encoded (default: Ray Data, batches of 64)."""
    splits = open_splits(data)
    if not splits.val:
        raise ConfigError(f"metric val_accuracy needs a labelled val split, and {splits.name} has none.")
    base = num_base_classes(len(splits.classnames))
    items = sample_k_shot(splits.val, shots, seed, labels=range(base))
    val = dataclasses.replace(splits, classnames=splits.classnames[:base], train=(), test=items, val=())
    cv = restrict_by_name(load_class_vectors(class_vectors), val.classnames)
    entry = Entry("student", ModelRef("student", student), cv, seed)
    how = how or Encoding(batch_size=64, precision=precision)
    (s,) = score([entry], val, protocol="cross", how=how)
    return float(s.metrics["accuracy"])


def restrict_by_name(class_vectors: ClassVectors, classnames: Sequence[str]) -> ClassVectors:
    """The class vectors of `classnames` (e.g. ImageNet-A's 200) picked by name from a larger set."""
    index = {name: i for i, name in enumerate(class_vectors.classnames)}
    missing = [n for n in classnames if n not in index]
    if missing:
        raise ClassVectorsError(
            f"class vectors lack {len(missing)} of the dataset's classes (first: {missing[0]!r})."
        )
    return class_vectors.subset([index[n] for n in classnames])
