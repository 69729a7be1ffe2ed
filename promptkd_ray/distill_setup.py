"""Stage II's setup: what the driver resolves from a job before any worker starts.

    prepare(job, run)      → Setup: the stream (images, teacher, decode spec), the model specs, the
                             class vectors, the soft-label cache to replay (and a teacher ensemble's
                             further caches with their teachers' class vectors)
    resolve(job)           → (Stream, teacher spec, student spec), every mismatch in one sentence
    new_student(job, …)    the job's student (driver and workers alike)
    run_datasets(job, …)   the run's Ray datasets (stream, replay, held-out slice), or none and a
                           `ResidentPlan` when the workers hold the images (`data.in_memory`)
    worker_plan(job, …)    → WorkerPlan: what every Ray Train worker gets of the job and the setup

Design decisions:
- The stream is built here once (`orchestration.pipeline.Stream`) and every Stage II dataset of the
  run (the training stream, the held-out slice, a soft-label cache build) is made from it.
- The job's cache is opened whole (a teacher ensemble's further caches are checked against all of
  it), then cut to its first `teacher.cache_views` slots (`Cache.first`): every reader of
  `Setup.cache` — the replay, resident workers, the log — sees that K and nothing else.
- Class vectors come from `teacher.class_vectors`, or are computed here once with the teacher's
  text tower and stored in the run folder; a resumed run reuses the stored ones, so its
  checkpoint fingerprint (class-vector hash) still matches. A teacher ensemble's members get theirs
  the same way, each from the teacher its cache records (`orchestration/ensemble.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .config import DistillJob
from .config.distill import StudentConfig, TrainConfig
from .core.artifacts import ModelRef, StudentInfo, read_teacher_info
from .core.classvectors import (
    ClassVectors,
    check_class_vectors,
    compute_class_vectors,
    load_class_vectors,
    save_class_vectors,
)
from .core.loss_config import LossConfig
from .core.models import build_student
from .core.models.loading import vision_setting
from .data.sources import PathSource, open_world, resolve_source, vocabulary_names
from .errors import ConfigError
from .orchestration.bookkeeping import Bookkeeping
from .orchestration.cache import Cache, open_cache, replay_datasets
from .orchestration.ensemble import EnsemblePlan, Member, member_class_vectors, open_members
from .orchestration.meter import BatchPlan
from .orchestration.pipeline import DecodeSpec, Stream, distill_datasets, with_run_teachers
from .orchestration.resident import ResidentPlan, resident_plan
from .storage import Storage

log = logging.getLogger(__name__)

CLASS_VECTORS_NAME = "class_vectors"


@dataclass(frozen=True)
class Setup:
    """What the driver resolved from the job before any worker starts."""

    stream: Stream  # the images (and held-out slice), the teacher labelling them, how they are decoded
    teacher_spec: str  # the teacher's MODEL[:PRETRAINED]
    student_spec: str  # the student's MODEL[:PRETRAINED]
    class_vectors: ClassVectors  # W [N, d_t]
    cache: Optional[Cache] = (
        None  # the soft-label cache to replay (teacher.cache, cut to teacher.cache_views)
    )
    members: tuple = ()  # a teacher ensemble's further `Member`s (teacher.ensemble), checked against `cache`

    @property
    def source(self):
        return self.stream.source

    def fingerprint(self, job: DistillJob) -> dict:
        """What a checkpoint must have been made with to be resumed by this job."""
        s = job.student
        return {
            "student": self.student_spec,
            "n_ctx": s.n_ctx,
            "depth": s.depth,
            "projector": s.projector,
            "edu_attention_width": edu_attention_width(job, self.class_vectors.dim),
            "teacher": self.teacher_spec,
            "class_vectors_sha256": self.class_vectors.sha256,
            "views_replayed": self.cache.views if self.cache else "streamed",  # K: epoch e reads slot e mod K
            **({"ensemble": self.ensemble(job)} if self.members else {}),
        }

    def recorded(self, job: DistillJob) -> dict:
        """What a run's metrics.json and its student's JSON record of how the cache was replayed:
        the view slots (`cache_views`, when the job cuts the cache) and the ensemble (`teacher_ensemble`)."""
        return {
            **({"cache_views": job.teacher.cache_views} if self.cache and job.teacher.cache_views else {}),
            **({"teacher_ensemble": self.ensemble(job)} if self.members else {}),
        }

    def ensemble(self, job: DistillJob) -> dict:
        """The teacher ensemble as a run records it: its further caches, their class vectors, the rule."""
        return {
            "caches": [m.cache.storage.root for m in self.members],
            "class_vectors_sha256": [m.class_vectors.sha256 for m in self.members],
            "combine": job.teacher.combine,
        }

    def student_info(self, job: DistillJob, student, **extra) -> StudentInfo:
        """The artifact header of a student of this setup: backbone, prompts, projector, the class
        vectors and the teacher they came from, and `extra` (what trained it)."""
        s, cv = job.student, self.class_vectors
        teacher_ref = {"kind": self.stream.teacher.kind, "source": self.stream.teacher.source}
        return StudentInfo(
            spec=self.student_spec,
            teacher_dim=cv.dim,
            n_ctx=s.n_ctx,
            depth=s.depth,
            projector=s.projector,
            class_vectors_sha256=cv.sha256,
            edu_attention_width=student.edu_attention_width,
            extra={
                "job": job.name,
                "teacher_ref": teacher_ref,
                "class_vectors_templates": list(cv.templates),
                **self.recorded(job),
                **extra,
            },
        )


def edu_attention_width(job, dim: int) -> int:
    """C of the student's ComKD-CLIP EduAttention (0 = none): on with `loss.edu_attention` (`job`:
    anything with the `student` and `loss` sections, a DistillJob or a WorkerPlan)."""
    return (job.student.edu_attention_width or dim) if job.loss.edu_attention else 0


def new_student(job, spec: str, dim: int, device="cpu"):
    """The job's student (frozen backbone, fresh prompts, projector and EduAttention); `job` as in
    `edu_attention_width`."""
    s = job.student
    return build_student(
        spec,
        teacher_dim=dim,
        n_ctx=s.n_ctx,
        depth=s.depth,
        projector=s.projector,
        device=device,
        edu_attention_width=edu_attention_width(job, dim),
    )


def prepare(job: DistillJob, run: Storage, gpus: bool = False) -> Setup:
    """Resolve the images, the models, the class vectors and the input size; every mismatch ends in
    one sentence before any worker starts. `gpus`: the cluster offers GPUs (the teacher's place)."""
    stream, teacher_spec, student_spec = resolve(job, gpus)
    cache = open_cache(job.teacher.cache, stream) if job.teacher.cache else None
    members = open_members(job.teacher.ensemble, cache) if job.teacher.ensemble else ()
    if cache is not None:  # members are checked against the whole cache, then it is cut to K slots
        cache = cache.first(job.teacher.cache_views)
    cv = _class_vectors(job, run, stream, teacher_spec)
    if cv.dim != vision_setting(teacher_spec, "embed_dim"):
        raise ConfigError(
            f"The class vectors have dim {cv.dim}, but the teacher {teacher_spec} emits "
            f"features of dim {vision_setting(teacher_spec, 'embed_dim')}."
        )
    members = tuple(
        Member(m, member_class_vectors(m, cv.classnames, job.teacher.templates, run, i))
        for i, m in enumerate(members, 1)
    )
    if members:
        log.info(
            "teacher ensemble (combine: %s): the job's teacher %s and %s",
            job.teacher.combine,
            teacher_spec,
            ", ".join(f"{m.class_vectors.teacher} ({m.cache.storage.root})" for m in members),
        )
    return Setup(stream, teacher_spec, student_spec, cv, cache, members)


def resolve(job: DistillJob, gpus: bool = False) -> tuple:
    """(the job's `Stream`, teacher spec, student spec); `gpus`: the cluster offers GPUs."""
    world = open_world(job.data) if job.data.source == "toyworld" else None
    student_spec = job.student.spec or (world.student_spec if world else "")
    if job.teacher.artifact:
        teacher, teacher_spec = (
            ModelRef("teacher", job.teacher.artifact),
            read_teacher_info(job.teacher.artifact).spec,
        )
    else:
        teacher_spec = job.teacher.spec or (world.teacher_spec if world else "")
        teacher = ModelRef("zeroshot", teacher_spec)
    source = resolve_source(job.data, job.seed, world)
    if job.data.mixup_alpha > 0 and not isinstance(source, PathSource):
        raise ConfigError(
            f"data.mixup_alpha mixes views with partner images read by path; data.source: {job.data.source} "
            "does not give loose image files, so set data.mixup_alpha: 0."
        )
    size = job.data.image_size or vision_setting(student_spec, "image_size")
    for role, spec in (("teacher", teacher_spec), ("student", student_spec)):
        if vision_setting(spec, "image_size") != size:
            raise ConfigError(
                f"The {role} {spec} takes {vision_setting(spec, 'image_size')}-px images, but the job "
                f"trains at {size} px (data.image_size); teacher and student must see the same view."
            )
    stream = Stream(source, teacher, job.teacher_pool, DecodeSpec.of(job, size), gpus)
    return stream, teacher_spec, student_spec


def _class_vectors(job: DistillJob, run: Storage, stream: Stream, teacher_spec: str) -> ClassVectors:
    """The class vectors the student distils against: of the dataset's classes, or (KDPL-CA) of
    `teacher.vocabulary`; given, stored in the run folder by an earlier attempt, or computed here.
    The run folder always ends up with a copy, so a run (or a sweep's trial) can be scored alone."""
    source = stream.source
    names = vocabulary_names(job.teacher.vocabulary) if job.teacher.vocabulary else source.classnames
    expected = tuple(names) or None
    for path, where in (
        (job.teacher.class_vectors, f"class vectors {job.teacher.class_vectors}"),
        (
            run.path(CLASS_VECTORS_NAME) if run.exists(CLASS_VECTORS_NAME + ".json") else "",
            f"class vectors in {run.root}",
        ),
    ):
        if path:
            cv = load_class_vectors(path)
            check_class_vectors(cv, expected_classnames=expected, source=where)
            if not run.exists(CLASS_VECTORS_NAME + ".json"):
                save_class_vectors(cv, run.path(CLASS_VECTORS_NAME))
            return cv
    if not names:
        raise ConfigError(
            f"{source.name} has no class names to compute class vectors from; set "
            "teacher.class_vectors to a class-vectors artifact (or teacher.vocabulary)."
        )
    log.info(
        "computing class vectors for %d classes%s with %s (templates: %s)",
        len(names),
        " of the vocabulary" if job.teacher.vocabulary else "",
        teacher_spec,
        job.teacher.templates,
    )
    cv = compute_class_vectors(
        stream.teacher.build("cpu"), list(names), templates=job.teacher.templates, teacher_spec=teacher_spec
    )
    save_class_vectors(cv, run.path(CLASS_VECTORS_NAME))
    return cv


def run_datasets(job: DistillJob, setup: Setup, books, running):
    """The run's Ray datasets and its `ResidentPlan` (None when it streams): the stream or a replay
    of its soft-label cache, and the held-out slice; no training dataset when the workers hold the
    images (`data.in_memory`)."""
    stream, cache, members = setup.stream, setup.cache, tuple(m.cache.storage.root for m in setup.members)
    if cache is None:
        stream = with_run_teachers(stream, running)
    resident = resident_plan(job.data, stream, job.train, books, cache, members)
    if resident is not None:  # the workers decode the images once and render the views themselves
        return {}, resident
    if cache is not None:
        log.info(
            "replaying the soft-label cache %s (%d views per image): no teacher actors",
            cache.storage.root,
            cache.views,
        )
        return replay_datasets(cache, stream.decode, books, job.train.record_ids, members), None
    return distill_datasets(stream, books, job.train.record_ids), None


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a Ray Train worker needs, and nothing else (sent to every worker)."""

    seed: int  # the job's seed (the student's fresh prompts)
    student: StudentConfig  # the job's student section
    loss: LossConfig  # the job's loss section
    train: TrainConfig  # the job's optimiser, schedule and workers
    run: str  # the run folder (TensorBoard, the id audit)
    student_spec: str  # the student's MODEL[:PRETRAINED]
    class_vectors: torch.Tensor  # W [N, d_t]
    teacher_logit_scale: float  # exp'd; KDPL uses the student's instead (`core.step.teacher_scale`)
    fingerprint: dict  # see Setup.fingerprint
    steps_per_epoch: int  # global steps per epoch
    batches: BatchPlan  # how each worker reads its shard
    has_heldout: bool  # a "heldout" dataset goes to rank 0
    books: Bookkeeping  # unreadable images counted exactly; rank 0 tells the stream's tasks the epoch
    board: object  # ProgressBoard actor of the driver's console
    resident: Optional[ResidentPlan] = None  # images decoded once into the workers (`data.in_memory`)
    ensemble: Optional[EnsemblePlan] = None  # a teacher ensemble's further members (`teacher.ensemble`)


def worker_plan(job: DistillJob, setup: Setup, run: Storage, has_heldout: bool, books, board) -> WorkerPlan:
    """What the Ray Train workers get of the job and the setup."""
    parquet_like = not isinstance(setup.source, PathSource)
    return WorkerPlan(
        seed=job.seed,
        student=job.student,
        loss=job.loss,
        train=job.train,
        run=run.root,
        student_spec=setup.student_spec,
        class_vectors=setup.class_vectors.vectors,
        teacher_logit_scale=setup.class_vectors.logit_scale,
        fingerprint=setup.fingerprint(job),
        steps_per_epoch=setup.source.num_train // job.train.batch_size,
        batches=BatchPlan(
            size=job.train.batch_size // job.train.num_workers,
            seed=job.seed,
            local_shuffle=4 * job.train.batch_size if parquet_like and job.data.shuffle else None,
        ),
        has_heldout=has_heldout,
        books=books,
        board=board,
        ensemble=EnsemblePlan.of(setup.members, job.teacher.combine) if setup.members else None,
    )
