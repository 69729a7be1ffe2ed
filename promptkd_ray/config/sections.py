"""The sections every job kind shares: the run, optimisation, workers, images and Ray.

A job kind (`config/distill.py`, `config/teacher.py`) is a `JobBase` with its own sections; where
both stages need the same settings they inherit them from here, so a field is written once, with
its comment, and its rule is checked once. The YAML stays flat: `train:` holds the optimisation
and the workers' keys side by side.

Design decisions:
- A value that loads must also run: counts and weights are ≥ 0, seeds fit numpy's and Optuna's
  32-bit seeds, the run name is one folder name, a URI names a scheme pyarrow.fs knows (`file://`
  with an absolute path) and a local path has no part over 255 bytes, and a template set is a
  known name or one template with a single '{}'. So a job that validates cannot fail later on
  one of these; everything else a value can break (a depth the model has not) is checked where the
  model is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Optional

from ..core.templates import TEMPLATE_SETS
from ..data.limits import DEFAULT_MAX_IMAGE_PIXELS, EXIF_ORIENTATIONS, PIL_REFUSAL_PIXELS
from ..errors import ConfigError
from ..storage import is_uri
from .loader import WEIGHT_SUFFIXES, choice, path_field, show_value

IMAGE_SOURCES = ("benchmark", "split_json", "imagefolder", "parquet", "toyworld", "packed")
URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")  # what pyarrow.fs opens
SEED_MAX = 2**32 - 1  # numpy's legacy and Optuna's seeds are 32-bit
_URI = re.compile(r"([a-z][a-z0-9+.-]*)://(.*)", re.S)
_SPEC = re.compile(r"[^\s:]+(:.*)?", re.S)
REQUIRED_BY_SOURCE = {
    "benchmark": ("root", "dataset"),
    "split_json": ("root", "dataset", "split_file"),
    "imagefolder": ("root",),
    "parquet": ("parquet",),
    "toyworld": (),
    "packed": ("root",),
}


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
    lr_scaling: str = choice(
        "none", "linear"
    )  # linear: lr × batch_size / base_batch_size (authors: 256 → 0.16)
    base_batch_size: int = 8  # batch size that `lr` is given for
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    weight_decay: float = 5e-4  # weight decay (authors: 5e-4)
    schedule: str = choice("cosine", "constant")  # per-epoch lr schedule after the warm-up
    warmup_epochs: int = 1  # epochs at constant `warmup_lr` before the schedule (authors: 1)
    warmup_lr: float = 1e-5  # warm-up learning rate (authors: 1e-5)
    grad_clip_norm: float = 0.0  # the gradients' global norm is clipped to this before each step (0 = off)
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
    poll_s: float = (
        0.25  # Ray Train's controller polls its workers this often (Ray: 2 s; a run's end waits a poll)
    )


# The toy world's profiles (promptkd_ray.toyworld.world.PROFILES; a test keeps the two equal), the
# default first: "dialect" is the demo's world, "full" the earlier one, "quick" the tests'.
TOYWORLD_PROFILES = ("dialect", "full", "quick")


@dataclass(frozen=True)
class ImagesConfig:
    source: str = choice(*IMAGE_SOURCES)  # how to find the images (see `data.sources`)
    root: str = (
        path_field()
    )  # data root folder or URI; packed: the pack; toyworld: the world cache ("" = default)
    dataset: str = ""  # benchmark name, split_json dataset folder, or toy-world domain ("" = its default)
    image_folder: str = ""  # split_json only: image folder inside the dataset folder
    split_file: str = ""  # split_json only: split JSON file inside the dataset folder
    toyworld_profile: str = choice(
        *TOYWORLD_PROFILES
    )  # toyworld only: which world (dialect: the demo's; full: the earlier one; quick: the tests')
    toyworld_seed: int = 0  # toyworld only: seed of the world (pretraining + images), not of the run
    image_size: int = 0  # training resolution in pixels; 0 = the model's input size
    crop_scale_min: float = 0.08  # smallest train crop, as a fraction of the image area (authors: 0.08)
    max_image_pixels: int = (
        DEFAULT_MAX_IMAGE_PIXELS  # an image declaring more pixels (width × height) is refused undecoded
    )
    exif_orientation: str = choice(
        *EXIF_ORIENTATIONS
    )  # EXIF rotation: ignore (authors) or apply before cropping


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
    problems.need(
        bool(job.name.strip()), "name", "must be set: it names the run and is how a re-run resumes it."
    )
    problems.need(
        folder_name_ok(job.name) or not job.name.strip(),
        "name",
        f"must be one folder name (no '/', not '.' or '..', at most 255 bytes), got {show_value(job.name)}.",
    )
    problems.need(bool(job.storage_path.strip()), "storage_path", "must be a folder or URI.")
    problems.need(0 <= job.seed <= SEED_MAX, "seed", f"must be in 0 … {SEED_MAX}, got {job.seed}.")
    location_checks(job, problems)
    spec_checks(job, problems)
    problems.at_least("ray", job.ray, num_cpus=0, object_store_mb=0)
    optim_checks(job.train, problems)
    workers_checks(job.train, job.train.batch_size, problems)
    images_checks(job.data, problems)


def optim_checks(t: OptimConfig, problems: Problems, section: str = "train") -> None:
    problems.at_least(section, t, epochs=1, batch_size=1, base_batch_size=1, log_every=1)
    problems.need(t.lr > 0, f"{section}.lr", f"must be > 0, got {t.lr}.")
    problems.need(
        math.isfinite(t.effective_lr),
        f"{section}.lr",
        f"× batch_size / base_batch_size (lr_scaling: linear) must be a finite number, got {t.effective_lr}.",
    )
    problems.need(0 <= t.momentum < 1, f"{section}.momentum", f"must be in [0, 1), got {t.momentum}.")
    problems.at_least(section, t, weight_decay=0, warmup_lr=0, grad_clip_norm=0)
    problems.need(
        0 <= t.warmup_epochs < t.epochs,
        f"{section}.warmup_epochs",
        f"must be ≥ 0 and less than {section}.epochs ({t.epochs}), got {t.warmup_epochs}.",
    )


def workers_checks(t: WorkersConfig, batch_size: int, problems: Problems, section: str = "train") -> None:
    problems.at_least(section, t, num_workers=1, checkpoints_to_keep=1)
    problems.need(
        batch_size % max(t.num_workers, 1) == 0,
        f"{section}.batch_size",
        f"({batch_size}) must be divisible by {section}.num_workers ({t.num_workers}).",
    )
    problems.need(
        t.max_failures >= -1,
        f"{section}.max_failures",
        f"must be ≥ -1 (-1 = unlimited), got {t.max_failures}.",
    )
    problems.at_least(section, t, cpus_per_worker=0)
    problems.need(t.poll_s > 0, f"{section}.poll_s", f"must be > 0 seconds, got {t.poll_s}.")
    resources_checks(t.resources_per_worker, f"{section}.resources_per_worker", problems)


def resources_checks(resources: dict, key: str, problems: Problems) -> None:
    for name, amount in resources.items():
        problems.need(amount >= 0, key, f"must map names to amounts ≥ 0, got {show_value(name)}: {amount}.")


def templates_ok(templates: str) -> bool:
    """A template-set name, or one template whose only placeholder is one '{}'."""
    if templates in TEMPLATE_SETS:
        return True
    try:
        return "{}" in templates and templates.format("x") == templates.replace("{}", "x", 1)
    except (ValueError, IndexError, KeyError):
        return False


def folder_name_ok(name: str, max_bytes: int = 255) -> bool:
    """Whether `name` can be one folder's name on every file system and object store we write to."""
    return (
        name.strip() == name
        and name not in (".", "..")
        and not {"/", "\\"} & set(name)
        and len(name.encode("utf-8", "surrogatepass")) <= max_bytes
    )


def location_problem(value: str) -> str:
    """What makes a folder, file or URI unusable before it is opened ("" when nothing does)."""
    if is_uri(value):
        match = _URI.fullmatch(value)
        if not match or match.group(1) not in URI_SCHEMES:
            return f"must be a local path or a URI of {', '.join(URI_SCHEMES)} (scheme://…)"
        if match.group(1) == "file" and not match.group(2).startswith("/"):
            return "must be file:///ABSOLUTE/PATH when it is a file:// URI"
        return ""
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split(os.sep)):
        return "has a path part over 255 bytes, which no file system takes"
    return ""


def spec_checks(job, problems: Problems) -> None:
    """Every model spec that is set must read as MODEL[:PRETRAINED] (MODEL without spaces)."""
    for prefix, section in _sections(job):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.metadata.get("spec") and value:
                problems.need(
                    value == value.strip() and bool(_SPEC.fullmatch(value)),
                    f"{prefix}.{f.name}",
                    f"must be MODEL[:PRETRAINED], got {show_value(value)}.",
                )


def location_checks(job, problems: Problems) -> None:
    """`storage_path`, a soft-label `teacher.cache` (and `teacher.ensemble`'s) and every path field must be
    usable locations."""
    places = [("storage_path", job.storage_path), ("teacher.cache", getattr(job.teacher, "cache", ""))]
    places += [("teacher.ensemble", value) for value in getattr(job.teacher, "ensemble", ())]
    places += [
        (f"{prefix}.{f.name}", getattr(section, f.name))
        for prefix, section in _sections(job)
        for f in dataclasses.fields(section)
        if f.metadata.get("path")
    ]
    for key, value in places:
        problem = location_problem(value) if value else ""
        problems.need(not problem, key, f"{problem}, got {show_value(value)}.")


def images_checks(d: ImagesConfig, problems: Problems, section: str = "data") -> None:
    problems.need(
        0 < d.crop_scale_min <= 1, f"{section}.crop_scale_min", f"must be in (0, 1], got {d.crop_scale_min}."
    )
    problems.need(d.image_size >= 0, f"{section}.image_size", f"must be ≥ 0, got {d.image_size}.")
    problems.need(
        0 <= d.toyworld_seed <= SEED_MAX,
        f"{section}.toyworld_seed",
        f"must be in 0 … {SEED_MAX}, got {d.toyworld_seed}.",
    )
    problems.need(
        1 <= d.max_image_pixels <= PIL_REFUSAL_PIXELS,
        f"{section}.max_image_pixels",
        f"must be in 1 … {PIL_REFUSAL_PIXELS} (PIL refuses larger images itself), got {d.max_image_pixels}.",
    )
    for name in REQUIRED_BY_SOURCE[d.source]:
        problems.need(
            bool(getattr(d, name)), f"{section}.{name}", f"must be set when {section}.source is {d.source}."
        )


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
            if (
                not kind
                or is_uri(value)
                or (f.name == "root" and getattr(section, "source", "") == "toyworld")
            ):
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
    if (
        weights
        and (os.sep in weights or weights.endswith(WEIGHT_SUFFIXES))
        and not is_uri(weights)
        and not os.path.exists(weights)
    ):
        raise ConfigError(f"{source}: {key} names the weights file {weights}, which does not exist.")


def _check_artifact(value: str, key: str, source: str) -> None:
    """An artifact is NAME.safetensors + NAME.json; the field may name either or NAME itself."""
    stem = value.removesuffix(".safetensors").removesuffix(".json")
    for suffix in (".safetensors", ".json"):
        if not os.path.isfile(stem + suffix):
            raise ConfigError(f"{source}: {key} names {value}, but {stem + suffix} does not exist.")
