"""Stage II jobs (`kind: distill`): the teacher, the student, the unlabeled images, the teacher
pool, training and the loss. A job YAML maps one to one onto `DistillJob`; every field's comment
says what it means, and `jobs/*.yaml` show them in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from ..core.loss_config import LOSS_PRESETS, LossConfig
from .loader import choice, path_field, section, show_value, spec_field
from .sections import (
    IMAGE_SOURCES,
    ImagesConfig,
    JobBase,
    OptimConfig,
    Problems,
    RayConfig,
    WorkersConfig,
    resources_checks,
    templates_ok,
    training_job_checks,
)


@dataclass(frozen=True)
class TeacherConfig:
    spec: str = spec_field()  # zero-shot teacher CLIP as MODEL[:PRETRAINED]; ignored when `artifact` is set
    artifact: str = path_field(
        artifact=True
    )  # Stage I teacher artifact (NAME.safetensors + NAME.json); "" = `spec`
    class_vectors: str = path_field(
        artifact=True
    )  # class-vectors artifact; "" = compute them from the teacher here
    templates: str = (
        "single"  # templates for computed class vectors: "single", "imagenet60" or one '{}' template
    )
    vocabulary: str = ""  # KDPL-CA: distil over these names, not the dataset's: a names file or "toyworld"
    cache: str = (
        ""  # soft-label cache folder or URI (`promptkd-ray cache`): replayed instead of running the teacher
    )
    cache_views: int = 0  # replay only the cache's first K view slots (epoch e reads slot e mod K); 0 = all
    ensemble: Tuple[str, ...] = ()  # further soft-label caches: other teachers, the same views ([] = none)
    combine: str = choice("mean", "confidence")  # ensemble target: mean probability, or per-image confidence


@dataclass(frozen=True)
class StudentConfig:
    spec: str = spec_field()  # student CLIP as MODEL[:PRETRAINED] (its backbone stays frozen)
    n_ctx: int = 4  # visual prompt tokens per layer
    depth: int = 9  # prompted layers (authors: 9 base-to-novel, 3 cross-dataset)
    projector: str = choice("mlp2", "linear", "identity")  # student→teacher dim projector (authors: mlp2)
    edu_attention_width: int = (
        0  # width C of the EduAttention when loss.edu_attention (0 = the class vectors' dim)
    )


@dataclass(frozen=True)
class DataConfig(ImagesConfig):
    source: str = choice(*IMAGE_SOURCES)  # how to find the images (see `data.sources`)
    split: str = choice("train", "val", "test")  # split whose images are distilled on (labels are never read)
    parquet: str = path_field()  # parquet only: Parquet file, folder or URI with encoded images
    image_column: str = "image"  # parquet only: column of encoded image bytes
    heldout_images: int = 256  # images in the label-free held-out slice for agreement / KL (0 = none)
    heldout_split: str = choice(
        "", "train", "val", "test"
    )  # split of the held-out slice; "" = held out of `split`
    limit: int = 0  # distil on at most this many images, picked with `seed` (0 = all)
    shuffle: bool = True  # reshuffle the image order every epoch (a shuffle of paths, not of pixels)
    preserve_order: bool = (
        False  # batches in the seeded order (the same batches on a re-run with 1 worker; slower)
    )
    on_bad_image: str = choice("skip", "fail")  # unreadable file: skip and count it, or fail the run
    decode_batch_size: int = 32  # images per decode + augment task batch
    in_memory: str = choice(
        "never", "auto", "always"
    )  # decode the images once into the Train workers' memory (loose files); auto = when they fit
    in_memory_mb: int = 2048  # in_memory=auto: the most decoded images one worker may hold (MB)
    decode_memory_mb: int = (
        640  # memory reserved per decode task: its worker (Ray Data measured ~450 MiB) + a batch
    )
    mixup_alpha: float = (
        0.0  # consistent mixup (ours): λ ~ Beta(α, α) blends a view with a partner's; 0 = off
    )
    mixup_prob: float = 1.0  # mixup on: the share of train views that are mixed


@dataclass(frozen=True)
class TeacherPoolConfig:
    size: int = 1  # teacher actors (the minimum when max_size > size)
    max_size: int = 0  # let the pool autoscale up to this many actors (0 = fixed at `size`)
    batch_size: int = 64  # images per teacher forward pass
    num_gpus: float = -1.0  # GPUs per actor; -1 = 1 when the cluster has GPUs, else 0
    num_cpus: float = 1.0  # CPUs per actor
    resources: Dict[str, float] = field(default_factory=dict)  # custom resources per actor, e.g. {teacher: 1}
    precision: str = choice(
        "auto", "bf16", "fp16", "fp32"
    )  # teacher autocast; auto = bf16 on GPU, fp32 on CPU


@dataclass(frozen=True)
class TrainConfig(WorkersConfig, OptimConfig):
    precision: str = choice("auto", "bf16", "fp32")  # student autocast; auto = bf16 on GPU, fp32 on CPU
    record_ids: bool = False  # audit: write the image ids each worker received, per epoch, to ids/ in the run


@dataclass(frozen=True)
class DistillJob(JobBase):
    kind: str = choice("distill")  # Stage II, run by `promptkd-ray distill`
    teacher: TeacherConfig = section(TeacherConfig)  # the teacher and its class vectors
    student: StudentConfig = section(StudentConfig)  # the student and its prompts
    data: DataConfig = section(DataConfig)  # unlabeled images
    teacher_pool: TeacherPoolConfig = section(TeacherPoolConfig)  # online teacher actors
    train: TrainConfig = section(TrainConfig)  # optimiser, schedule, Ray Train workers
    loss: LossConfig = section(LossConfig, presets=LOSS_PRESETS)  # the KD loss; `preset` picks a method
    ray: RayConfig = section(RayConfig)  # where Ray runs

    @property
    def effective_lr(self) -> float:
        return self.train.effective_lr


def distill_checks(job: DistillJob) -> Problems:
    """(key, message) for each rule that a field's type cannot say."""
    d, s, p = job.data, job.student, job.teacher_pool
    problems = Problems()
    training_job_checks(job, problems)
    toy = d.source == "toyworld"
    problems.need(
        bool(job.teacher.spec or job.teacher.artifact or toy),
        "teacher.spec",
        "or teacher.artifact must be set.",
    )
    problems.need(bool(s.spec or toy), "student.spec", "must be set (MODEL[:PRETRAINED]).")
    problems.at_least("student", s, n_ctx=1, depth=0, edu_attention_width=0)
    problems.at_least("teacher_pool", p, size=1, batch_size=1)
    problems.at_least(
        "data", d, decode_batch_size=1, decode_memory_mb=1, in_memory_mb=1, heldout_images=0, limit=0
    )
    problems.need(d.mixup_alpha >= 0, "data.mixup_alpha", f"must be ≥ 0 (0 = off), got {d.mixup_alpha}.")
    problems.need(0 < d.mixup_prob <= 1, "data.mixup_prob", f"must be in (0, 1], got {d.mixup_prob}.")
    problems.need(
        p.max_size == 0 or p.max_size >= p.size,
        "teacher_pool.max_size",
        f"must be 0 or ≥ teacher_pool.size ({p.size}), got {p.max_size}.",
    )
    problems.need(
        p.num_gpus == -1 or p.num_gpus >= 0,
        "teacher_pool.num_gpus",
        f"must be -1 (auto) or ≥ 0, got {p.num_gpus}.",
    )
    problems.at_least("teacher_pool", p, num_cpus=0)
    resources_checks(p.resources, "teacher_pool.resources", problems)
    problems.at_least("loss", job.loss, kd_weight=0, feature_weight=0, ifalign_weight=0)
    problems.need(
        templates_ok(job.teacher.templates),
        "teacher.templates",
        f"must be single, imagenet60 or one template with one '{{}}', "
        f"got {show_value(job.teacher.templates)}.",
    )
    cache_checks(job.teacher, problems)
    return problems


def cache_checks(t: TeacherConfig, problems: Problems) -> None:
    """What replays soft-label caches needs one: `cache_views` (a prefix of the job's cache; checked
    against its K when the run opens it) and a teacher ensemble (the job's own first, each named once)."""
    problems.need(
        t.cache_views >= 0,
        "teacher.cache_views",
        f"must be ≥ 0 (0 = every view slot of the cache), got {t.cache_views}.",
    )
    problems.need(
        not t.cache_views or bool(t.cache),
        "teacher.cache_views",
        "replays the first K view slots of a soft-label cache, so it needs teacher.cache.",
    )
    problems.need(
        not t.ensemble or bool(t.cache),
        "teacher.ensemble",
        "needs teacher.cache: an ensemble replays soft-label caches, so build one per teacher with "
        "`promptkd-ray cache` and set the job's own as teacher.cache.",
    )
    repeated = [c for i, c in enumerate(t.ensemble) if c in (t.cache, *t.ensemble[:i])]
    problems.need(
        not repeated,
        "teacher.ensemble",
        f"names the cache {show_value(repeated[0] if repeated else '')} twice (teacher.cache counts).",
    )
