"""Stage II jobs: frozen dataclasses, YAML loading, `key=value` overrides and validation.

A job YAML (`jobs/*.yaml`) maps one to one onto `DistillJob`: every YAML section is one of the
dataclasses below, every key one field, and each field's comment says what it means.

Design decisions:
- Loading is strict. An unknown key, a value of the wrong type, a value outside its choices or a
  local path that does not exist ends in a `ConfigError`: one sentence that names the file and
  the dotted key (`jobs/x.yaml: train.epochs must be an integer, got '20 epochs'.`).
- Overrides (`train.epochs=2 data.root=/data`) are applied to the raw YAML mapping before it is
  checked, so they obey the same rules; their values are parsed as YAML (`2` is an int, `null` is
  None, `{teacher: 1}` is a mapping; `1e-5` is a number although YAML 1.1 reads it as a string).
- The `loss` section is the step's own `LossConfig` plus a `preset` key (`promptkd`, `kdpl`,
  `kdpl_ca`, `comkd`): the preset gives the defaults, the other keys override them.
- Paths are checked only when they are local; URIs (`s3://…`) are left to the reader that opens
  them. Relative paths are relative to the working directory the job runs in.
- Nothing here imports Ray: validating a job needs no cluster.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from .step import LOSS_PRESETS, LossConfig

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
DATA_SOURCES = ("benchmark", "split_json", "imagefolder", "parquet", "toyworld")


class ConfigError(ValueError):
    """A job file that cannot be used as written; the message is one sentence naming file and key."""


def choice(default: str, *others: str):
    """A string field that accepts only `default` and `others`."""
    return field(default=default, metadata={"choices": (default, *others)})


def path_field(default: str = ""):
    """A string field holding a local path or URI that must exist when set and local."""
    return field(default=default, metadata={"path": True})


@dataclass(frozen=True)
class TeacherConfig:
    spec: str = ""  # zero-shot teacher CLIP as MODEL[:PRETRAINED]; ignored when `artifact` is set
    artifact: str = path_field()  # Stage I teacher artifact (NAME.safetensors + NAME.json); "" = use `spec`
    class_vectors: str = path_field()  # class-vectors artifact; "" = compute them from the teacher here
    templates: str = "single"  # templates for computed class vectors: "single", "imagenet60" or one '{}' template


@dataclass(frozen=True)
class StudentConfig:
    spec: str = ""  # student CLIP as MODEL[:PRETRAINED] (its backbone stays frozen)
    n_ctx: int = 4  # visual prompt tokens per layer
    depth: int = 9  # prompted layers (authors: 9 base-to-novel, 3 cross-dataset)
    projector: str = choice("mlp2", "linear", "identity")  # student→teacher dim projector (authors: mlp2)


@dataclass(frozen=True)
class DataConfig:
    source: str = choice(*DATA_SOURCES)  # how to find the images (see the five readers in `sources`)
    root: str = path_field()  # data root folder or URI; toyworld: the world cache ("" = the default cache)
    dataset: str = ""  # benchmark name, split_json dataset folder, or toy-world domain ("" = its default)
    image_folder: str = ""  # split_json only: image folder inside the dataset folder
    split_file: str = ""  # split_json only: split JSON file inside the dataset folder
    split: str = choice("train", "val", "test")  # split whose images are distilled on (labels are never read)
    parquet: str = path_field()  # parquet only: Parquet file, folder or URI with encoded images
    image_column: str = "image"  # parquet only: column of encoded image bytes
    toyworld_profile: str = choice("full", "quick")  # toyworld only: which world (quick = the tests' small one)
    toyworld_seed: int = 0  # toyworld only: seed of the world (pretraining + images), not of distillation
    image_size: int = 0  # training resolution in pixels; 0 = the student's input size
    crop_scale_min: float = 0.08  # smallest train crop, as a fraction of the image area (authors: 0.08)
    heldout_images: int = 256  # images in the label-free held-out slice for agreement / KL (0 = none)
    heldout_split: str = ""  # split the held-out slice comes from; "" = held out of `split` (not trained on)
    limit: int = 0  # distil on at most this many images, picked with `seed` (0 = all)
    shuffle: bool = True  # reshuffle the image order every epoch (a shuffle of paths, not of pixels)
    on_bad_image: str = choice("skip", "fail")  # unreadable file: skip and count it, or fail the run
    decode_batch_size: int = 32  # images per decode + augment task batch
    decode_memory_mb: int = 640  # memory reserved per decode task: its worker (Ray Data measured ~450 MiB) + a batch


@dataclass(frozen=True)
class TeacherPoolConfig:
    size: int = 1  # teacher actors (the minimum when max_size > size)
    max_size: int = 0  # let the pool autoscale up to this many actors (0 = fixed at `size`)
    batch_size: int = 64  # images per teacher forward pass
    num_gpus: float = -1.0  # GPUs per actor; -1 = 1 when the cluster has GPUs, else 0
    num_cpus: float = 1.0  # CPUs per actor
    resources: Dict[str, float] = field(default_factory=dict)  # custom resources per actor, e.g. {teacher: 1}
    precision: str = choice("auto", "bf16", "fp16", "fp32")  # teacher autocast; auto = bf16 on GPU, fp32 on CPU


@dataclass(frozen=True)
class TrainConfig:
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
    num_workers: int = 1  # Ray Train DDP workers
    use_gpu: Optional[bool] = None  # one GPU per worker; null = when the cluster has GPUs
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    resources_per_worker: Dict[str, float] = field(default_factory=dict)  # custom resources per worker
    precision: str = choice("auto", "bf16", "fp32")  # student autocast; auto = bf16 on GPU, fp32 on CPU
    max_failures: int = 2  # worker-group restarts from the last checkpoint before the run fails
    checkpoints_to_keep: int = 2  # most recent checkpoints kept in storage
    log_every: int = 50  # log progress every this many steps (rank 0)


@dataclass(frozen=True)
class FaultInjectionConfig:
    kill_at_step: int = 0  # tests only: a worker exits at this global step, once per run (0 = off)
    rank: int = 0  # the worker rank that exits


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # cluster address; "" = RAY_ADDRESS / a running cluster, else start a local one
    num_cpus: int = 0  # local cluster only: logical CPUs (0 = enough for workers + teacher pool + reads)
    object_store_mb: int = 0  # local cluster only: object store size in MiB (0 = Ray's default)
    progress_bars: bool = True  # Ray Data progress bars


@dataclass(frozen=True)
class DistillJob:
    name: str = ""  # run name; re-running a job with the same name and storage resumes it
    storage_path: str = "runs"  # folder or URI (s3://…) that holds runs: checkpoints, TensorBoard, artifacts
    seed: int = 0  # seed of the student's prompt init, the held-out slice and `data.limit`
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the teacher and its class vectors
    student: StudentConfig = field(default_factory=StudentConfig)  # the student and its prompts
    data: DataConfig = field(default_factory=DataConfig)  # unlabeled images
    teacher_pool: TeacherPoolConfig = field(default_factory=TeacherPoolConfig)  # online teacher actors
    train: TrainConfig = field(default_factory=TrainConfig)  # Ray Train workers, optimiser, schedule
    loss: LossConfig = field(default_factory=LossConfig)  # the KD loss; YAML may name a `preset`
    fault_injection: FaultInjectionConfig = field(default_factory=FaultInjectionConfig)  # tests only
    ray: RayConfig = field(default_factory=RayConfig)  # where Ray runs

    @property
    def effective_lr(self) -> float:
        if self.train.lr_scaling == "linear":
            return self.train.lr * self.train.batch_size / self.train.base_batch_size
        return self.train.lr


# --- loading -------------------------------------------------------------------------------------

def load_job(path: "str | os.PathLike", overrides: "typing.Sequence[str]" = (), check_paths: bool = True) -> DistillJob:
    """Read a job YAML, apply `key=value` overrides, convert and validate it."""
    return job_from_dict(read_job_yaml(path), source=str(path), overrides=overrides, check_paths=check_paths)


def read_job_yaml(path: "str | os.PathLike") -> dict:
    """The mapping of sections in a job YAML file, or a one-sentence ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Job file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, found a {type(raw).__name__}.")
    return raw


def build_job(cls, raw: dict, source: str, overrides: "typing.Sequence[str]",
              checks: "typing.Callable[[Any], list[tuple[str, str]]]"):
    """Apply `key=value` overrides to a copy of `raw`, convert it strictly into the frozen
    dataclass `cls`, and raise the first of `checks(job)`'s (dotted key, message) problems."""
    raw = _deepcopy(raw)
    for text in overrides:
        _apply_override(raw, text, source)
    job = _convert(cls, raw, "", source)
    for key, message in checks(job):
        raise ConfigError(f"{source}: {key} {message}")
    return job


def job_from_dict(raw: dict, source: str = "<dict>", overrides: "typing.Sequence[str]" = (),
                  check_paths: bool = True) -> DistillJob:
    job = build_job(DistillJob, raw, source, overrides, _cross_checks)
    if check_paths:
        check_job_paths(job, source)
    return job


def job_to_dict(job: DistillJob) -> dict:
    """The job as plain nested dicts (YAML-ready; `loss` written out in full, no preset)."""
    return dataclasses.asdict(job)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], YAML-parsed value)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected an override as KEY=VALUE (e.g. train.epochs=2), got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply_override(raw: dict, text: str, source: str) -> None:
    try:
        keys, value = parse_override(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}.") from None
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {text!r} goes inside {'.'.join(keys[:i + 1])}, which is not a section.")
        node = child
    node[keys[-1]] = value


def _deepcopy(value):
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def _convert(cls, raw, prefix: str, source: str):
    """Build dataclass `cls` from mapping `raw`, naming `prefix.key` in every error."""
    where = prefix or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping of keys, got {_show(raw)}.")
    raw = dict(raw)
    base = cls()
    if cls is LossConfig:
        preset = raw.pop("preset", "promptkd")
        if preset not in LOSS_PRESETS:
            raise ConfigError(f"{source}: {prefix}.preset must be one of {sorted(LOSS_PRESETS)}, got {_show(preset)}.")
        base = LOSS_PRESETS[preset]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{source}: unknown key {_dotted(prefix, key)} (known keys here: {known}).")
    values = {}
    for name, f in fields.items():
        key = _dotted(prefix, name)
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _convert(hint, raw[name], key, source)
        else:
            values[name] = _check_value(raw[name], hint, key, source)
        allowed = f.metadata.get("choices")
        if allowed and values[name] not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}, got {_show(values[name])}.")
    try:
        return dataclasses.replace(base, **values)
    except ValueError as exc:  # __post_init__ checks (e.g. LossConfig)
        raise ConfigError(f"{source}: {exc}") from None


def _check_value(value, hint, key: str, source: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _check_value(value, hint, key, source)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be true or false, got {_show(value)}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be an integer, got {_show(value)}.")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-5 as a string
            return float(value)
        raise ConfigError(f"{source}: {key} must be a number, got {_show(value)}.")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key} must be a string, got {_show(value)}.")
    if origin in (dict, Dict):
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items())
        if ok:
            return {k: float(v) for k, v in value.items()}
        raise ConfigError(f"{source}: {key} must be a mapping of names to numbers, got {_show(value)}.")
    raise TypeError(f"config field {key} has an unsupported type {hint}")  # a bug in this module


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- validation ----------------------------------------------------------------------------------

def _cross_checks(job: DistillJob) -> list[tuple[str, str]]:
    """(key, message) for each rule that involves more than one field's type."""
    t, d, s, p = job.train, job.data, job.student, job.teacher_pool
    problems: list[tuple[str, str]] = []

    def need(condition: bool, key: str, message: str) -> None:
        if not condition:
            problems.append((key, message))

    need(bool(job.name.strip()), "name", "must be set: it names the run and is how a re-run resumes it.")
    need(bool(job.storage_path.strip()), "storage_path", "must be a folder or URI.")
    need(bool(job.teacher.spec or job.teacher.artifact or d.source == "toyworld"), "teacher.spec",
         "or teacher.artifact must be set.")
    need(bool(s.spec or d.source == "toyworld"), "student.spec", "must be set (MODEL[:PRETRAINED]).")
    need(s.n_ctx >= 1, "student.n_ctx", f"must be ≥ 1, got {s.n_ctx}.")
    need(s.depth >= 0, "student.depth", f"must be ≥ 0, got {s.depth}.")
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.base_batch_size", t.base_batch_size), ("train.num_workers", t.num_workers),
                       ("train.log_every", t.log_every), ("train.checkpoints_to_keep", t.checkpoints_to_keep),
                       ("teacher_pool.size", p.size), ("teacher_pool.batch_size", p.batch_size),
                       ("data.decode_batch_size", d.decode_batch_size), ("data.decode_memory_mb", d.decode_memory_mb)):
        need(value >= 1, key, f"must be ≥ 1, got {value}.")
    need(t.batch_size % max(t.num_workers, 1) == 0, "train.batch_size",
         f"({t.batch_size}) must be divisible by train.num_workers ({t.num_workers}).")
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}.")
    need(0 <= t.warmup_epochs < t.epochs, "train.warmup_epochs",
         f"must be ≥ 0 and less than train.epochs ({t.epochs}), got {t.warmup_epochs}.")
    need(t.max_failures >= -1, "train.max_failures", f"must be ≥ -1 (-1 = unlimited), got {t.max_failures}.")
    need(p.max_size == 0 or p.max_size >= p.size, "teacher_pool.max_size",
         f"must be 0 or ≥ teacher_pool.size ({p.size}), got {p.max_size}.")
    need(0 < d.crop_scale_min <= 1, "data.crop_scale_min", f"must be in (0, 1], got {d.crop_scale_min}.")
    need(d.heldout_split in ("", "train", "val", "test"), "data.heldout_split",
         f"must be '', train, val or test, got {d.heldout_split!r}.")
    need(d.image_size >= 0 and d.heldout_images >= 0 and d.limit >= 0, "data",
         "image_size, heldout_images and limit must be ≥ 0.")
    required = {"benchmark": ("root", "dataset"), "split_json": ("root", "dataset", "split_file"),
                "imagefolder": ("root",), "parquet": ("parquet",), "toyworld": ()}[d.source]
    for name in required:
        need(bool(getattr(d, name)), f"data.{name}", f"must be set when data.source is {d.source}.")
    f = job.fault_injection
    need(f.kill_at_step >= 0 and 0 <= f.rank < t.num_workers, "fault_injection",
         f"needs kill_at_step ≥ 0 and 0 ≤ rank < train.num_workers, got {f.kill_at_step} and {f.rank}.")
    return problems


def is_uri(path: str) -> bool:
    return "://" in path


def check_job_paths(job: DistillJob, source: str = "<job>") -> None:
    """Every local path the job names must exist (URIs are checked by their readers)."""
    for prefix, section in (("teacher", job.teacher), ("data", job.data)):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            built_on_first_use = prefix == "data" and f.name == "root" and job.data.source == "toyworld"
            if f.metadata.get("path") and value and not is_uri(value) and not built_on_first_use:
                if f.name in ("artifact", "class_vectors"):
                    _check_artifact(value, f"{prefix}.{f.name}", source)
                elif not os.path.exists(value):
                    raise ConfigError(f"{source}: {prefix}.{f.name} names {value}, which does not exist.")
    for key, spec in (("teacher.spec", job.teacher.spec), ("student.spec", job.student.spec)):
        weights = spec.partition(":")[2]
        if weights and (os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar"))) \
                and not is_uri(weights) and not os.path.exists(weights):
            raise ConfigError(f"{source}: {key} names the weights file {weights}, which does not exist.")


def _check_artifact(value: str, key: str, source: str) -> None:
    """An artifact is NAME.safetensors + NAME.json; the field may name either or NAME itself."""
    stem = value[: -len(".safetensors")] if value.endswith(".safetensors") else \
        value[: -len(".json")] if value.endswith(".json") else value
    for suffix in (".safetensors", ".json"):
        if not os.path.isfile(stem + suffix):
            raise ConfigError(f"{source}: {key} names {value}, but {stem + suffix} does not exist.")
