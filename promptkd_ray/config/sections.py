"""The sections every job kind shares: the run, optimisation, workers, images and Ray.

A job kind (`config/distill.py`, `config/teacher.py`) is a `JobBase` with its own sections; where
both stages need the same settings they inherit them from here, so a field is written once, with
its comment, and its rule is checked once. The YAML stays flat: `train:` holds the optimisation
and the workers' keys side by side.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

from ..errors import ConfigError
from ..storage import is_uri
from .loader import WEIGHT_SUFFIXES, choice, path_field

IMAGE_SOURCES = ("benchmark", "split_json", "imagefolder", "parquet", "toyworld")
REQUIRED_BY_SOURCE = {"benchmark": ("root", "dataset"), "split_json": ("root", "dataset", "split_file"),
                      "imagefolder": ("root",), "parquet": ("parquet",), "toyworld": ()}


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # cluster address; "" = RAY_ADDRESS / `ray job submit`'s cluster, else a new local one
    num_cpus: int = 0  # local cluster only: logical CPUs (0 = enough for workers + teacher pool + reads)
    object_store_mb: int = 0  # local cluster only: object store size in MiB (0 = Ray's default)
    progress_bars: bool = True  # a progress bar per epoch on the console (steps, loss, agreement, images/s)


@dataclass(frozen=True)
class JobBase:
    kind: str = ""  # the job's kind: "distill" (Stage II) or "teacher" (Stage I); the command that runs it
    name: str = ""  # run name; re-running a job with the same name and storage resumes it
    storage_path: str = "runs"  # folder or URI (s3://…) that holds runs: checkpoints, TensorBoard, artifacts
    seed: int = 0  # seed of the run (prompt init, sampling, batch order)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 20  # epochs, the warm-up epochs included (authors: 20)
    batch_size: int = 8  # global batch, split evenly over the workers (authors: 8, drop_last)
    optimizer: str = choice("sgd", "adamw")  # sgd = the authors'; adamw for short toy jobs
    lr: float = 0.005  # learning rate at `base_batch_size` (authors: 0.005 at 8)
    lr_scaling: str = choice("none", "linear")  # linear: lr × batch_size / base_batch_size (authors: 256 → 0.16)
    base_batch_size: int = 8  # batch size that `lr` is given for
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    weight_decay: float = 5e-4  # weight decay (authors: 5e-4)
    schedule: str = choice("cosine", "constant")  # per-epoch lr schedule after the warm-up
    warmup_epochs: int = 1  # epochs at constant `warmup_lr` before the schedule (authors: 1)
    warmup_lr: float = 1e-5  # warm-up learning rate (authors: 1e-5)
    log_every: int = 50  # TensorBoard gets the step loss/agreement every this many global steps (rank 0)

    @property
    def effective_lr(self) -> float:
        if self.lr_scaling == "linear":
            return self.lr * self.batch_size / self.base_batch_size
        return self.lr


@dataclass(frozen=True)
class WorkersConfig:
    num_workers: int = 1  # Ray Train workers (DDP: gradients averaged over them)
    use_gpu: Optional[bool] = None  # one GPU per worker; null = when the cluster has GPUs
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    resources_per_worker: Dict[str, float] = field(default_factory=dict)  # custom resources per worker
    max_failures: int = 2  # worker-group restarts from the last checkpoint before the run fails
    checkpoints_to_keep: int = 2  # most recent checkpoints kept in storage


@dataclass(frozen=True)
class ImagesConfig:
    source: str = choice(*IMAGE_SOURCES)  # how to find the images (see `data.sources`)
    root: str = path_field()  # data root folder or URI; toyworld: the world cache ("" = the default cache)
    dataset: str = ""  # benchmark name, split_json dataset folder, or toy-world domain ("" = its default)
    image_folder: str = ""  # split_json only: image folder inside the dataset folder
    split_file: str = ""  # split_json only: split JSON file inside the dataset folder
    toyworld_profile: str = choice("full", "quick")  # toyworld only: which world (quick = the tests' small one)
    toyworld_seed: int = 0  # toyworld only: seed of the world (pretraining + images), not of the run
    image_size: int = 0  # training resolution in pixels; 0 = the model's input size
    crop_scale_min: float = 0.08  # smallest train crop, as a fraction of the image area (authors: 0.08)


class Problems(list):
    """(dotted key, message) pairs of a job's broken rules, in order."""

    def need(self, condition: bool, key: str, message: str) -> None:
        if not condition:
            self.append((key, message))

    def at_least(self, section: str, obj, **minimums: float) -> None:
        """`section.name` must be ≥ its minimum, for each name given."""
        for name, minimum in minimums.items():
            value = getattr(obj, name)
            self.need(value >= minimum, f"{section}.{name}", f"must be ≥ {minimum}, got {value}.")


def training_job_checks(job, problems: Problems) -> None:
    """The rules every training job shares: its name and storage, `train` (optimisation and
    workers) and `data` (images)."""
    problems.need(bool(job.name.strip()), "name", "must be set: it names the run and is how a re-run resumes it.")
    problems.need(bool(job.storage_path.strip()), "storage_path", "must be a folder or URI.")
    optim_checks(job.train, problems)
    workers_checks(job.train, job.train.batch_size, problems)
    images_checks(job.data, problems)


def optim_checks(t: OptimConfig, problems: Problems, section: str = "train") -> None:
    problems.at_least(section, t, epochs=1, batch_size=1, base_batch_size=1, log_every=1)
    problems.need(t.lr > 0, f"{section}.lr", f"must be > 0, got {t.lr}.")
    problems.need(0 <= t.warmup_epochs < t.epochs, f"{section}.warmup_epochs",
                  f"must be ≥ 0 and less than {section}.epochs ({t.epochs}), got {t.warmup_epochs}.")


def workers_checks(t: WorkersConfig, batch_size: int, problems: Problems, section: str = "train") -> None:
    problems.at_least(section, t, num_workers=1, checkpoints_to_keep=1)
    problems.need(batch_size % max(t.num_workers, 1) == 0, f"{section}.batch_size",
                  f"({batch_size}) must be divisible by {section}.num_workers ({t.num_workers}).")
    problems.need(t.max_failures >= -1, f"{section}.max_failures", f"must be ≥ -1 (-1 = unlimited), got {t.max_failures}.")


def images_checks(d: ImagesConfig, problems: Problems, section: str = "data") -> None:
    problems.need(0 < d.crop_scale_min <= 1, f"{section}.crop_scale_min", f"must be in (0, 1], got {d.crop_scale_min}.")
    problems.need(d.image_size >= 0, f"{section}.image_size", f"must be ≥ 0, got {d.image_size}.")
    for name in REQUIRED_BY_SOURCE[d.source]:
        problems.need(bool(getattr(d, name)), f"{section}.{name}", f"must be set when {section}.source is {d.source}.")


def check_paths(job, source: str) -> None:
    """Every local path the job names must exist (URIs are checked by their readers; a toy world's
    root is built on first use)."""
    for prefix, section in _sections(job):
        for f in dataclasses.fields(section):
            value, key = getattr(section, f.name), f"{prefix}.{f.name}"
            if not value or not isinstance(value, str):
                continue
            if f.metadata.get("spec"):
                _check_spec(value, key, source)
            kind = f.metadata.get("path")
            if not kind or is_uri(value) or (f.name == "root" and getattr(section, "source", "") == "toyworld"):
                continue
            if kind == "artifact":
                _check_artifact(value, key, source)
            elif not os.path.exists(value):
                raise ConfigError(f"{source}: {key} names {value}, which does not exist.")


def _sections(job):
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if dataclasses.is_dataclass(value):
            yield f.name, value


def _check_spec(spec: str, key: str, source: str) -> None:
    weights = spec.partition(":")[2]
    if weights and (os.sep in weights or weights.endswith(WEIGHT_SUFFIXES)) and not is_uri(weights) \
            and not os.path.exists(weights):
        raise ConfigError(f"{source}: {key} names the weights file {weights}, which does not exist.")


def _check_artifact(value: str, key: str, source: str) -> None:
    """An artifact is NAME.safetensors + NAME.json; the field may name either or NAME itself."""
    stem = value.removesuffix(".safetensors").removesuffix(".json")
    for suffix in (".safetensors", ".json"):
        if not os.path.isfile(stem + suffix):
            raise ConfigError(f"{source}: {key} names {value}, but {stem + suffix} does not exist.")
