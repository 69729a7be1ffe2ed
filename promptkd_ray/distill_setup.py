"""Driver-side setup of a Stage II run: connect to Ray, resolve the images, the teacher, the
class vectors and the input size, and check that they fit together before any worker starts.

Design decisions:
- `ray.address: ""` connects to `RAY_ADDRESS` (set by `ray job submit`) and otherwise starts a new
  local cluster (never silently joins some other cluster found on the machine). A local cluster
  gets enough logical CPUs for the Train workers + teacher pool + reads: with fewer, the actor pool
  and the Train workers wait on each other for ever (DESIGN.md, "Running here").
- Class vectors come from `teacher.class_vectors`, or are computed here once with the teacher's
  text tower and stored in the run folder; a resumed run reuses the stored ones, so its checkpoint
  fingerprint (class-vector hash) still matches.
- Every mismatch (class names, teacher dim, input sizes) ends in one sentence before training.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .classvectors import (ClassVectors, check_class_vectors, compute_class_vectors, load_class_vectors,
                           save_class_vectors)
from .config import ConfigError, DistillJob
from .models.loading import ModelSpec, model_config
from .pipeline import TeacherSource
from .runstore import RunStore, localize_artifact
from .sources import ImageSource, resolve_source

log = logging.getLogger(__name__)

CLASS_VECTORS_NAME = "class_vectors"


@dataclass(frozen=True)
class Prepared:
    source: ImageSource  # images to distil on + the held-out slice
    teacher: TeacherSource  # how teacher actors build the teacher
    teacher_spec: str  # the teacher's MODEL[:PRETRAINED]
    student_spec: str  # the student's MODEL[:PRETRAINED]
    class_vectors: ClassVectors  # W [N, d_t]
    image_size: int  # training resolution (teacher and student)


def connect_ray(job: DistillJob) -> None:
    import ray

    if not ray.is_initialized():
        address = job.ray.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address)
        else:
            num_cpus = job.ray.num_cpus or local_cpus_needed(job)
            store = job.ray.object_store_mb * 1024**2 or None
            log.info("starting a local Ray cluster with %d logical CPUs", num_cpus)
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=store)
    ray.data.DataContext.get_current().enable_progress_bars = job.ray.progress_bars


def local_cpus_needed(job: DistillJob) -> int:
    """Train workers + teacher actors + 2 for decode tasks and Ray's own actors, or the machine's."""
    t, p = job.train, job.teacher_pool
    need = t.num_workers * t.cpus_per_worker + max(p.size, p.max_size) * p.num_cpus + 2
    return int(max(os.cpu_count() or 1, need + 0.999))


def warn_missing_resources(job: DistillJob) -> None:
    """Custom resources no node offers (yet): the pool or the workers wait for an autoscaler."""
    import ray

    offered = ray.cluster_resources()
    wanted = {**job.teacher_pool.resources, **job.train.resources_per_worker}
    for name in sorted(k for k in wanted if k not in offered):
        log.warning("no node of this cluster offers the resource %r (asked for by the job); the teacher pool or "
                    "the Train workers wait until an autoscaler adds such a node", name)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def prepare(job: DistillJob, store: RunStore) -> Prepared:
    world = _toyworld(job) if job.data.source == "toyworld" else None
    teacher_spec, student_spec, teacher = _models(job, world)
    source = resolve_source(job.data, job.seed, world.dataset if world else None)
    cv = _class_vectors(job, store, teacher, teacher_spec, source)
    teacher_dim = _vision(teacher_spec, "embed_dim")
    if cv.dim != teacher_dim:
        raise ConfigError(f"The class vectors have dim {cv.dim}, but the teacher {teacher_spec} emits "
                         f"features of dim {teacher_dim}.")
    size = job.data.image_size or _vision(student_spec, "image_size")
    for role, spec in (("teacher", teacher_spec), ("student", student_spec)):
        native = _vision(spec, "image_size")
        if native != size:
            raise ConfigError(f"The {role} {spec} takes {native}-px images, but the job trains at {size} px "
                             "(data.image_size); teacher and student must see the same view at their input size.")
    return Prepared(source=source, teacher=teacher, teacher_spec=teacher_spec, student_spec=student_spec,
                    class_vectors=cv, image_size=size)


def _vision(spec: str, key: str) -> int:
    cfg = model_config(ModelSpec.parse(spec).name)
    value = cfg[key] if key == "embed_dim" else cfg["vision_cfg"][key]
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _models(job: DistillJob, world) -> tuple[str, str, TeacherSource]:
    """(teacher spec, student spec, teacher source) from the job (or the toy world)."""
    student_spec = job.student.spec or (world.student_spec if world else "")
    if job.teacher.artifact:
        sidecar = json.loads(Path(localize_artifact(job.teacher.artifact) + ".json").read_text())
        return sidecar["spec"], student_spec, TeacherSource("artifact", job.teacher.artifact)
    teacher_spec = job.teacher.spec or (world.teacher_spec if world else "")
    return teacher_spec, student_spec, TeacherSource("zeroshot", teacher_spec)


def _class_vectors(job: DistillJob, store: RunStore, teacher: TeacherSource, teacher_spec: str,
                   source: ImageSource) -> ClassVectors:
    expected = source.classnames or None
    if job.teacher.class_vectors:
        cv = load_class_vectors(localize_artifact(job.teacher.class_vectors))
        check_class_vectors(cv, expected_classnames=expected, source=f"class vectors {job.teacher.class_vectors}")
        return cv
    if store.exists(CLASS_VECTORS_NAME + ".json"):
        with tempfile.TemporaryDirectory() as tmp:
            for suffix in (".safetensors", ".json"):
                Path(tmp, CLASS_VECTORS_NAME + suffix).write_bytes(store.read_bytes(CLASS_VECTORS_NAME + suffix))
            cv = load_class_vectors(Path(tmp, CLASS_VECTORS_NAME))
        check_class_vectors(cv, expected_classnames=expected, source=f"class vectors in {store.uri()}")
        log.info("reusing the class vectors stored in %s", store.uri())
        return cv
    if not source.classnames:
        raise ConfigError(f"{source.name} has no class names to compute class vectors from; set "
                         "teacher.class_vectors to a class-vectors artifact.")
    log.info("computing class vectors for %d classes with %s (templates: %s)", len(source.classnames),
             teacher_spec, job.teacher.templates)
    cv = compute_class_vectors(teacher.build("cpu"), list(source.classnames), templates=job.teacher.templates,
                               teacher_spec=teacher_spec)
    with tempfile.TemporaryDirectory() as tmp:
        save_class_vectors(cv, Path(tmp, CLASS_VECTORS_NAME))
        store.upload(tmp, "")
    return cv


@dataclass(frozen=True)
class _ToySetup:
    teacher_spec: str  # the world's pretrained teacher
    student_spec: str  # the world's pretrained student
    dataset: object  # DatasetSplits of the domain


def _toyworld(job: DistillJob) -> _ToySetup:
    """The toy world of the job (built on first use, then read from its cache) and its domain."""
    from .data.benchmarks import load_split_json_dataset
    from .toyworld import build_world

    d = job.data
    world = build_world(d.root or None, seed=d.toyworld_seed, profile=d.toyworld_profile)
    try:
        domain = world.domain(d.dataset or None)
    except KeyError as exc:
        raise ConfigError(f"data.dataset: {exc.args[0]}") from None
    splits = load_split_json_dataset(domain.root, domain.dataset_folder, domain.image_folder,
                                     domain.split_file.name, name=domain.name)
    return _ToySetup(world.teacher_spec, world.student_spec, splits)
