"""Teacher ensembles over soft-label caches (`teacher.ensemble`; ours, not in the papers).

    open_members(paths, cache)          each further cache, checked against the job's own (`teacher.cache`)
    member_teacher(cache)               the teacher that made a cache (its manifest), as a `ModelRef`
    member_class_vectors(…)             that teacher's class vectors of the job's classes, stored in the run
    EnsemblePlan                        what a Train worker needs: each further member's W_i, scale, the rule

Design decisions:
- Zipped by view. A member is a cache that `promptkd-ray cache` made from a job with another teacher
  over the same images, seed, image size, crop setting and K: its key equals the job's cache's except
  for the teacher, so slot s of both holds the same rows in the same order, file for file. That is
  checked when the run opens the caches (the first difference in one sentence), and again per file
  as it is read (`cache_files.with_members`: ids and view boxes equal, a cheap comparison); each
  member's features travel as one more column (`teacher_feature_i`) beside the job's teacher's.
- Each member scores the classes with its own class vectors (its own text tower over the job's class
  names and templates) and its own logit scale; features of different teachers may differ in dim.
  They are computed once and stored in the run folder (`class_vectors_ensemble_i`), as the job's own
  are (`distill_setup.py`), and reused by a resumed run when the same teacher made them.
- The combination is pure PyTorch (`core/ensemble.py`); the student still scores the job's own class
  vectors, and the feature terms and the held-out agreement and KL stay against the job's teacher.
- An ensemble needs caches: a streaming ensemble would run one teacher pool per member (refused by
  the job's checks, `config/distill.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..core.artifacts import ModelRef
from ..core.classvectors import ClassVectors, compute_class_vectors, load_class_vectors, save_class_vectors
from ..core.ensemble import Teacher
from ..errors import ConfigError
from ..storage import Storage
from .cache import KEY_WORDS, Cache, check_files, read_manifest, short_value, slot_name, teacher_identity
from .cache_files import member_column

SETTING = "teacher.ensemble cache"


@dataclass(frozen=True)
class Member:
    """A further teacher of the ensemble: its soft-label cache and its class vectors."""

    cache: Cache
    class_vectors: ClassVectors  # W_i [N, d_i] of the job's classes, by this member's teacher


def open_members(paths: Sequence[str], cache: Cache) -> tuple:
    """The caches at `paths`, each whole, untampered and holding the views of the job's `cache`; else
    one sentence naming the first difference."""
    members = []
    for path in paths:
        member = read_manifest(path, SETTING)
        root = member.storage.root
        if member.manifest["key"]["teacher"] == cache.manifest["key"]["teacher"]:
            raise ConfigError(
                f"{SETTING} {root} was made by the job's own teacher "
                f"({short_value(cache.manifest['key']['teacher'])}); an ensemble needs other teachers."
            )
        difference = view_difference(member, cache)
        if difference:
            raise ConfigError(
                f"{SETTING} {root} was made with {difference}; an ensemble's caches must hold the same views."
            )
        check_files(member, SETTING)
        members.append(member)
    return tuple(members)


def view_difference(member: Cache, cache: Cache) -> str:
    """The first way `member` holds other views than the job's `cache`, in words ("" when none)."""
    made, job = member.manifest["key"], cache.manifest["key"]
    for field, words in KEY_WORDS[1:]:  # every field but the teacher
        if made.get(field) != job.get(field):
            mine, theirs = short_value(made.get(field)), short_value(job.get(field))
            return f"{words} {mine}, the job's cache with {words} {theirs}"
    if member.views != cache.views:
        return f"K = {member.views} views per image, the job's cache with K = {cache.views}"
    for part in [slot_name(s) for s in range(cache.views)]:
        mine, theirs = member.manifest["parts"].get(part, {}), cache.manifest["parts"][part]
        if mine.get("rows") != theirs["rows"] or sorted(mine.get("files", ())) != sorted(theirs["files"]):
            return (
                f"{mine.get('rows', 0)} rows in {len(mine.get('files', ()))} files in {part}, the job's "
                f"cache with {theirs['rows']} in {len(theirs['files'])}"
            )
    return ""


def member_teacher(cache: Cache) -> ModelRef:
    """The teacher that made `cache`, from its manifest, with the weights it was made with."""
    key, root = cache.manifest["key"]["teacher"], cache.storage.root
    ref = cache.manifest.get("teacher_ref")
    if ref is None and key["kind"] != "zeroshot":
        raise ConfigError(
            f"{SETTING} {root} does not record where its teacher artifact is (built before teacher "
            "ensembles); rebuild it with `promptkd-ray cache`."
        )
    teacher = ModelRef(ref["kind"], ref["source"]) if ref else ModelRef("zeroshot", key["spec"])
    if teacher_identity(teacher) != key:
        raise ConfigError(
            f"{SETTING} {root} was made by {teacher.source} with other weights "
            f"({short_value(key)}); rebuild the cache."
        )
    return teacher


def member_class_vectors(member: Cache, names: Sequence[str], templates: str, run: Storage, i: int):
    """Class vectors of `names` by the teacher that made `member` (its text tower, `templates`): stored
    in `run` as `class_vectors_ensemble_i` and reused when that teacher made the stored ones."""
    name, made_by = f"class_vectors_ensemble_{i}", member.manifest["key"]["teacher"]
    if run.exists(name + ".json"):
        cv = load_class_vectors(run.path(name))
        if cv.classnames == tuple(names) and cv.meta.get("made_by") == [made_by, templates]:
            return cv
    teacher = member_teacher(member)
    cv = compute_class_vectors(
        teacher.build("cpu"), list(names), templates=templates, teacher_spec=teacher.spec
    )
    cv = replace(cv, meta={"made_by": [made_by, templates], "cache": member.storage.root})
    save_class_vectors(cv, run.path(name))
    return cv


@dataclass(frozen=True)
class EnsemblePlan:
    """What a Train worker needs of the ensemble's further members (sent in the `WorkerPlan`)."""

    class_vectors: tuple  # W_i [N, d_i] of members 1 … M-1 (the job's own teacher is member 0)
    logit_scales: tuple  # their exp'd logit scales (KDPL: replaced by the student's)
    combine: str  # "mean" or "confidence" (`core.ensemble.EnsembleLogits`)

    @classmethod
    def of(cls, members: Sequence[Member], combine: str) -> "EnsemblePlan":
        return cls(
            tuple(m.class_vectors.vectors for m in members),
            tuple(m.class_vectors.logit_scale for m in members),
            combine,
        )

    def to(self, device) -> "EnsemblePlan":
        return replace(self, class_vectors=tuple(w.to(device) for w in self.class_vectors))

    def teachers(self, batch: dict, own: Teacher) -> list:
        """The batch's `Teacher`s: the job's own (`own`), then each member's (column `teacher_feature_i`)."""
        device = own.features.device
        return [own] + [
            Teacher(torch.as_tensor(batch[member_column(i)]).to(device), w, scale)
            for i, (w, scale) in enumerate(zip(self.class_vectors, self.logit_scales), 1)
        ]
