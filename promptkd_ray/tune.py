"""Hyper-parameter sweeps of Stage II on Ray Tune: one trial = the job with a point of the space,
run by the distill recipe; the winner is chosen without test labels.

Read top to bottom:
    open_sweep(space, job, overrides)   the space checked against the job (every value of every key)
    run_sweep(sweep)                    caches (one per teacher) → Tune trials → trials.csv, sweep.md,
                                        sweep.png, best_job.yaml, best/ (`sweep_report.py`)
    run_trial(config, plan)             a Tune trial: its job → `run_distillation` with TuneReportCallback

Design decisions:
- The sweep folder is `storage_path/sweeps/NAME/`: `tune/` (Tune's state, restored when the same
  command runs again), `trials/NAME-TRIAL_ID/` (each trial's Stage II run folder: checkpoints,
  TensorBoard, student), `caches/LABEL/` (soft-label caches), and the outputs.
- Teacher sharing: before any trial starts, one soft-label cache per teacher choice is built (or
  found whole and reused) and every trial replays it, so a sweep pays one teacher pass per teacher,
  not one per trial. That holds only while the swept keys leave the teacher's views alone (loss,
  student, train except epochs, the teacher's class vectors/templates); a space over anything else
  is refused with cache on, and with `search.cache: false` the log says what every trial pays.
- Selection metrics: see `config/space.py` (held-out KL at T = 1 or agreement, or val accuracy for
  teacher choice); the training loss at a swept temperature is never used.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import DistillJob, distill_job_from_dict
from .config.loader import apply_override
from .config.space import (
    Space,
    apply_params,
    candidate_values,
    check_space,
    domain_parts,
    read_space,
    read_space_job,
)
from .errors import ConfigError
from .storage import Storage
from .sweep_report import class_vectors_of, write_sweep_outputs

log = logging.getLogger(__name__)
CACHE_NEUTRAL = (
    "loss.",
    "student.",
    "train.",
    "teacher.class_vectors",
    "teacher.templates",
    "teacher.vocabulary",
)


@dataclass(frozen=True)
class Sweep:
    space: Space
    raw_job: dict  # the job file with the command line's overrides applied
    job: DistillJob  # the job at every key's first value
    name: str  # sweep name
    folder: str  # storage_path/sweeps/NAME (absolute, or a URI)
    command: str = ""  # how it was started (for sweep.md)

    @property
    def teachers(self) -> dict:
        """Teacher label → the teacher section's values it sets ({"": {}} when the teacher is not swept)."""
        if "teacher" not in self.space.params:
            return {"": {}}
        return dict(domain_parts(self.space.params["teacher"])[1])  # named values (checked by read_space)

    def trial_name(self, trial_id: str) -> str:
        """A trial's Stage II run name; its run folder is `trial_run_dir`."""
        return f"{self.name}-{trial_id}"

    def trial_run_dir(self, trial_id: str) -> str:
        return Storage(self.folder).path(f"trials/{self.trial_name(trial_id)}")

    def trial_raw(self, config: dict, trial_id: str, caches: dict) -> dict:
        """The job mapping of a trial: the space's point (named values resolved), its run folder, its cache."""
        params = dict(config)
        for key, domain in self.space.params.items():
            values = domain_parts(domain)[1]
            if isinstance(values, dict) and key in params:  # named values: Tune holds the name
                params[key] = values[str(params[key])]
        raw = apply_params(self.raw_job, params, self.space.source)
        raw["name"], raw["storage_path"] = self.trial_name(trial_id), Storage(self.folder).path("trials")
        label = str(config.get("teacher", ""))
        if caches.get(label):
            raw.setdefault("teacher", {})["cache"] = caches[label]
        raw.setdefault("ray", {})["progress_bars"] = False
        return raw


def open_sweep(
    space_path: str,
    job_path: str = "",
    overrides: Sequence[str] = (),
    command: str = "",
    check_paths: bool = True,
) -> Sweep:
    """Read the space and its job; check every value of every key against the job (`check_paths`:
    local paths must exist, as for a job file)."""
    space = read_space(space_path)
    job_path, raw = read_space_job(space, job_path)
    for text in overrides:
        apply_override(raw, text, job_path)
    job = check_space(
        space, raw, lambda r, source: distill_job_from_dict(r, source, check_paths_exist=check_paths)
    )
    _check_metric_and_cache(space, job)
    name = space.name or Path(space_path).stem
    return Sweep(space, raw, job, name, Storage(job.storage_path).path(f"sweeps/{name}"), command)


def _check_metric_and_cache(space: Space, job: DistillJob) -> None:
    if space.metric.startswith("heldout") and job.data.heldout_images < 1:
        raise ConfigError(
            f"{space.source}: metric {space.metric} needs a held-out slice; the job has "
            "data.heldout_images: 0."
        )
    if not space.search.cache:
        return
    views = [k for k, domain in space.params.items() if _changes_views(k, domain)]
    if views:
        raise ConfigError(
            f"{space.source}: params.{views[0]} changes what the teacher sees (or how many views), so "
            "trials cannot share a soft-label cache; set search.cache: false (each trial then runs "
            "the teacher) or sweep teachers with teacher: {grid: {NAME: …}}."
        )
    if job.teacher.cache:
        raise ConfigError(
            f"{space.source}: the job already names teacher.cache; the sweep builds its own caches "
            "(search.cache: true), so drop it from the job or set search.cache: false."
        )


def _changes_views(key: str, domain) -> bool:
    """Whether a swept key changes the teacher's views or their number (so a shared cache would be wrong)."""
    if key == "teacher":
        return False  # one cache per teacher choice
    if key in ("loss", "student", "train"):  # whole sections: look at the keys the values set
        return any(_changes_views(f"{key}.{k}", None) for v in candidate_values(domain) for k in (v or {}))
    return not key.startswith(CACHE_NEUTRAL) or key == "train.epochs"


def run_sweep(sweep: Sweep):
    """Caches, then the trials (resumed if this sweep ran before), then the outputs; → SweepReport."""
    from .orchestration import cluster
    from .orchestration.tuning import run_tuner, trial_cpus, trials_the_cluster_holds

    job = sweep.job
    two_trials = 2 * trial_cpus(job)  # a local cluster started here runs 2 trials at once
    cluster.connect(job.ray, max(cluster.cpus_needed(job.train, job.teacher_pool), two_trials))
    caches = prepare_caches(sweep)
    concurrency = sweep.space.search.max_concurrent or trials_the_cluster_holds(job)
    log.info(
        "sweep %s: %s search, %s scheduler, metric %s (%s), %d trial(s) at once; folder %s",
        sweep.name,
        sweep.space.search.algorithm,
        sweep.space.scheduler.kind,
        sweep.space.metric,
        sweep.space.mode,
        concurrency,
        sweep.folder,
    )
    trial = functools.partial(run_trial, sweep=sweep, caches=caches)
    results = run_tuner(trial, sweep.space, sweep.folder, "tune", job.train.epochs, concurrency)
    return write_sweep_outputs(sweep, results, caches)


def prepare_caches(sweep: Sweep) -> dict:
    """Teacher label → its soft-label cache (built once, or found whole and reused); {} without caches."""
    from .distill import build_cache

    if not sweep.space.search.cache:
        log.info(
            "search.cache: false — every trial runs its own teacher pool: %d epochs of teacher forward passes "
            "over all training images per trial, as many teacher passes as trials",
            sweep.job.train.epochs,
        )
        return {}
    caches = {}
    for label in sweep.teachers:
        raw = sweep.trial_raw({"teacher": label} if label else {}, "cache", {})
        job = distill_job_from_dict(raw, sweep.space.source)
        caches[label] = Storage(sweep.folder).path(f"caches/{label or 'teacher'}")
        log.info("soft-label cache for teacher %s: %s", label or "(the job's)", caches[label])
        build_cache(job, out=caches[label], views=job.train.epochs)
    return caches


def run_trial(config: dict, sweep: Sweep, caches: dict) -> None:
    """One Tune trial: the job at `config`, trained with each epoch reported to Tune."""
    # deferred: torch and Ray, which `validate` (open_sweep) does not need
    from .distill import DistillResult, run_distillation
    from .evaluate import val_accuracy
    from .orchestration.checkpoints import latest_progress, run_storage
    from .orchestration.tuning import current_trial_id, epoch_reporter, report_to_tune

    trial_id = current_trial_id()
    job = distill_job_from_dict(sweep.trial_raw(config, trial_id, caches), sweep.space.source)
    run = run_storage(job)
    previous = latest_progress(run)  # a trial restarted by a resumed sweep: its run resumes
    for metrics in (previous or {}).get("history", []):
        report_to_tune(metrics)  # Tune restarts the trial's results from zero; give it the epochs already run
    done = previous is not None and previous["epoch"] + 1 >= job.train.epochs
    if done and run.is_file(
        "student.safetensors"
    ):  # finished before the sweep's driver stopped: nothing to do
        result = DistillResult(run.root, run.path("student.safetensors"), previous["history"], {})
    else:
        result = run_distillation(job, callbacks=[] if done else [epoch_reporter(job.train.epochs)])
    final = dict(result.history[-1]) if result.history else {}
    if sweep.space.metric == "val_accuracy":
        cv = class_vectors_of(job, result.run_dir)
        final["val_accuracy"] = val_accuracy(
            job.data, job.seed, result.student_artifact, cv, sweep.space.search.val_shots, job.train.precision
        )
    if final and (not done or sweep.space.metric == "val_accuracy"):
        report_to_tune(final)  # the last epoch (and the val score), once the student is written
