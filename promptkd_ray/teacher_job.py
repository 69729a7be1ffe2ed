"""Stage I jobs: the teacher recipe's settings as frozen dataclasses, loaded strictly from YAML.

A Stage I job YAML maps one to one onto `TeacherJob` (sections `teacher`, `data`, `train`, `ray`);
unknown keys, wrong types and values outside their choices end in a one-sentence `ConfigError`
naming the file and the dotted key, exactly as Stage II jobs (`promptkd_ray.config`, whose
converter this module reuses). Defaults are PromptKD's ViT-L/14 teacher recipe: PromptSRC with
vision and text depth 9, n_ctx 4, 16 shots of the base classes, SGD lr 0.005 at batch 8, 20 epochs
(1 warm-up at 1e-5), cosine, GPA N(15, 1), L_SCL weights 25 (text) and 10 (image).
Nothing here imports torch or Ray.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .config import RayConfig, build_job, choice, path_field, read_job_yaml

TEACHER_MODES = ("promptsrc", "zeroshot")


@dataclass(frozen=True)
class TeacherModelConfig:
    spec: str = ""  # base CLIP as MODEL[:PRETRAINED], e.g. ViT-L-14-quickgelu:/data/clip/ViT-L-14.pt
    mode: str = choice(*TEACHER_MODES)  # promptsrc = learn IVLP prompts; zeroshot = no training, templates
    vision_depth: int = 9  # prompted image-tower layers (promptsrc)
    text_depth: int = 9  # prompted text-tower layers (promptsrc; ≥ 1)
    n_ctx: int = 4  # prompt tokens per layer, both towers
    ctx_init: str = "a photo of a"  # initial words of the text context (its token count should be n_ctx)
    scl_templates: str = "imagenet60"  # templates of the frozen text targets of L_SCL (authors: the 60)
    zeroshot_templates: str = "single"  # zeroshot mode: templates of the class vectors (single | imagenet60)


@dataclass(frozen=True)
class FewShotDataConfig:
    source: str = choice("benchmark", "split_json")  # how to find the labelled images
    root: str = path_field()  # data root folder (benchmark, split_json)
    dataset: str = ""  # benchmark name, or split_json dataset folder
    image_folder: str = ""  # split_json only: image folder inside the dataset folder
    split_file: str = ""  # split_json only: split JSON file inside the dataset folder
    shots: int = 16  # labelled images per training class (authors: 16)
    classes: str = choice("base", "all")  # base = the first ⌈N/2⌉ labels (base-to-novel); all = cross-dataset
    image_size: int = 0  # training resolution; 0 = the model's input size
    crop_scale_min: float = 0.08  # smallest train crop, as a fraction of the image area (authors: 0.08)
    eval_test: bool = True  # score the final teacher on the test images of its training classes


@dataclass(frozen=True)
class TeacherTrainConfig:
    epochs: int = 20  # epochs incl. warm-up (authors: 20)
    batch_size: int = 8  # global batch, split over the workers (authors' ViT-L/14 teacher: 8)
    lr: float = 0.005  # SGD learning rate (authors: 0.005 for ViT-L/14 at batch 8, 0.0025 for ViT-B/16 at 4)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    warmup_epochs: int = 1  # epochs at `warmup_lr` before the cosine schedule
    warmup_lr: float = 1e-5  # warm-up learning rate
    gpa_mean: float = 15.0  # Gaussian Prompt Aggregation: mean epoch μ (1-based)
    gpa_std: float = 1.0  # GPA: standard deviation σ in epochs
    text_loss_weight: float = 25.0  # L_SCL: L1(prompted text, frozen text) weight
    image_loss_weight: float = 10.0  # L_SCL: L1(prompted image, frozen image) weight
    num_workers: int = 1  # Ray Train workers (gradients are averaged over them)
    use_gpu: Optional[bool] = None  # one GPU per worker; null = when the cluster has GPUs
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    max_failures: int = 2  # worker-group restarts from the last checkpoint before the run fails
    log_every: int = 20  # log progress every this many steps (rank 0)


@dataclass(frozen=True)
class TeacherJob:
    name: str = ""  # run name; re-running the job with the same name and storage resumes it
    storage_path: str = "runs"  # folder holding runs: Ray checkpoints, teacher.*, class_vectors.*
    seed: int = 1  # seed of the k-shot sample, the prompt init and the batch order (authors: 1, 2, 3)
    teacher: TeacherModelConfig = field(default_factory=TeacherModelConfig)  # model and prompts
    data: FewShotDataConfig = field(default_factory=FewShotDataConfig)  # labelled few-shot data
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)  # optimiser, schedule, GPA, workers
    ray: RayConfig = field(default_factory=RayConfig)  # where Ray runs


def load_teacher_job(path: "str | os.PathLike", overrides: Sequence[str] = ()) -> TeacherJob:
    """Read a Stage I job YAML, apply `key=value` overrides, convert and validate it."""
    return teacher_job_from_dict(read_job_yaml(path), str(path), overrides)


def teacher_job_from_dict(raw: dict, source: str = "<dict>", overrides: Sequence[str] = ()) -> TeacherJob:
    return build_job(TeacherJob, raw, source, overrides, _checks)


def teacher_job_to_dict(job: TeacherJob) -> dict:
    return dataclasses.asdict(job)


def _checks(job: TeacherJob) -> list[tuple[str, str]]:
    t, d, m = job.train, job.data, job.teacher
    problems: list[tuple[str, str]] = []

    def need(condition: bool, key: str, message: str) -> None:
        if not condition:
            problems.append((key, message))

    need(bool(job.name.strip()), "name", "must be set: it names the run and is how a re-run resumes it.")
    need(bool(m.spec), "teacher.spec", "must be set (MODEL[:PRETRAINED]).")
    if m.mode == "promptsrc":
        need(m.text_depth >= 1, "teacher.text_depth", f"must be ≥ 1 for PromptSRC, got {m.text_depth}.")
        need(m.vision_depth >= 0, "teacher.vision_depth", f"must be ≥ 0, got {m.vision_depth}.")
        need(m.n_ctx >= 1, "teacher.n_ctx", f"must be ≥ 1, got {m.n_ctx}.")
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.num_workers", t.num_workers), ("data.shots", d.shots), ("train.log_every", t.log_every)):
        need(value >= 1, key, f"must be ≥ 1, got {value}.")
    need(t.batch_size % max(t.num_workers, 1) == 0, "train.batch_size",
         f"({t.batch_size}) must be divisible by train.num_workers ({t.num_workers}).")
    need(0 < d.crop_scale_min <= 1, "data.crop_scale_min", f"must be in (0, 1], got {d.crop_scale_min}.")
    need(t.lr > 0 and t.gpa_std > 0, "train", f"lr and gpa_std must be > 0, got {t.lr} and {t.gpa_std}.")
    need(0 <= t.warmup_epochs < t.epochs, "train.warmup_epochs",
         f"must be ≥ 0 and less than train.epochs ({t.epochs}), got {t.warmup_epochs}.")
    required = {"benchmark": ("root", "dataset"), "split_json": ("root", "dataset", "split_file")}[d.source]
    for name in required:
        need(bool(getattr(d, name)), f"data.{name}", f"must be set when data.source is {d.source}.")
    return problems
