"""Hyper-parameter sweeps of Stage II on Ray Tune: one trial = the job with a point of the space,
run by the distill recipe; the winner is chosen without test labels.

Read top to bottom:
    open_sweep(space, job, overrides)   the space checked against the job (every value of every key)
    cache_plan(space, job)              the caches a space needs: K and label → the point they are built at
    run_sweep(sweep)                    caches (per teacher or member × view setting) → Tune trials →
                                        trials.csv, sweep.md, sweep.png, best_job.yaml, best/ (`sweep_report.py`)
    run_trial(config, plan)             a Tune trial: its job → `run_distillation` with TuneReportCallback

Design decisions:
- The sweep folder is `storage_path/sweeps/NAME/`: `tune/` (Tune's state, restored when the same
  command runs again), `trials/NAME-TRIAL_ID/` (each trial's Stage II run folder: checkpoints,
  TensorBoard, student), `caches/LABEL/` (soft-label caches), and the outputs.
- Teacher sharing: before any trial starts, one soft-label cache per distinct (teacher choice, view
  setting) is built (or found whole and reused) and every trial replays its own, so a sweep pays one
  teacher pass per view setting, not one per trial. Swept keys may leave the views alone (loss,
  student, train, the teacher's class vectors/templates, `teacher.cache_views`: which slots a trial
  replays), be a view setting listed by grid or choice (`VIEW_KEYS`: mixup, crop; a cache per
  value), or be `train.epochs` listed likewise: every cache holds K = the largest epochs, so a trial
  of E epochs replays the views a streaming run of E epochs draws. A range over those, or any other
  key that changes the views (seed, image size, images), is refused with cache on; with
  `search.cache: false` the log says what every trial pays.
- Teacher ensembles: a space may name further teachers (`members:`) and sweep `teacher.ensemble`
  over lists of their names. For every view setting the plan builds each named member's cache too
  (`caches/member-NAME-…`, the same K and views: only the teacher differs), and a trial replays its
  own cache as `teacher.cache` and its members' caches of its view setting, in the listed order, as
  `teacher.ensemble` ([] = none). `teacher.combine` leaves the caches alone.
- Cache folders are `caches/LABEL`: the teacher's name (or "teacher") and each swept view setting's
  value (`teacher-mixup_alpha0.2`), so a space that sweeps none keeps `caches/teacher`; with mixup
  off (α = 0) `data.mixup_prob` leaves the views alone, so its values share one cache.
- Selection metrics: see `config/space.py` (held-out KL at T = 1 or agreement, or val accuracy for
  teacher and ensemble choice); the training loss at a swept temperature is never used.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import DistillJob, distill_job_from_dict
from .config.loader import apply_override
from .config.space import (
    ENSEMBLE,
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
    "teacher.cache_views",
    "teacher.combine",
)
VIEW_KEYS = ("data.mixup_alpha", "data.mixup_prob", "data.crop_scale_min")  # a cache per listed value
LISTED = ("train.epochs", *VIEW_KEYS)  # swept over shared caches only with grid or choice
CACHE_STANDIN = "(the sweep's soft-label cache)"  # teacher.cache of a trial, as open_sweep checks it
MEMBER = "member"  # in a cache plan's point: the ensemble member the cache is built with
THE_JOBS = "(the job's)"  # the teacher of a cache plan's point that names none


@dataclass(frozen=True)
class Sweep:
    space: Space
    raw_job: dict  # the job file with the command line's overrides applied
    job: DistillJob  # the job at every key's first value (with cache on, teacher.cache is CACHE_STANDIN)
    name: str  # sweep name
    folder: str  # storage_path/sweeps/NAME (absolute, or a URI)
    command: str = ""  # how it was started (for sweep.md)

    def trial_name(self, trial_id: str) -> str:
        """A trial's Stage II run name; its run folder is `trial_run_dir`."""
        return f"{self.name}-{trial_id}"

    def trial_run_dir(self, trial_id: str) -> str:
        return Storage(self.folder).path(f"trials/{self.trial_name(trial_id)}")

    def trial_raw(self, config: dict, trial_id: str, caches: dict) -> dict:
        """The job mapping of a trial: the space's point (named values resolved), its run folder, its
        cache and its ensemble members' caches (`caches`: label → folder, from `prepare_caches`)."""
        params = resolve_names(self.space, config)
        raw = apply_params(self.raw_job, params, self.space.source)
        raw["name"], raw["storage_path"] = self.trial_name(trial_id), Storage(self.folder).path("trials")
        label = cache_label(self.space, self.job, config)
        if caches.get(label):
            raw.setdefault("teacher", {})["cache"] = caches[label]
            if ENSEMBLE in params:
                labels = [cache_label(self.space, self.job, config, name) for name in params[ENSEMBLE]]
                raw["teacher"]["ensemble"] = [caches[member] for member in labels]
        raw.setdefault("ray", {})["progress_bars"] = False
        return raw


def open_sweep(
    space_path: str,
    job_path: str = "",
    overrides: Sequence[str] = (),
    command: str = "",
    check_paths: bool = True,
) -> Sweep:
    """Read the space and its job; check every value of every key against the job as a trial runs it
    (`check_paths`: local paths must exist, as for a job file)."""
    space = read_space(space_path)
    job_path, raw = read_space_job(space, job_path)
    for text in overrides:
        apply_override(raw, text, job_path)
    teacher = raw.get("teacher")
    named = [key for key in ("cache", "ensemble") if isinstance(teacher, dict) and teacher.get(key)]
    if space.search.cache and named:
        raise ConfigError(
            f"{space.source}: the job already names teacher.{named[0]}; the sweep builds its own caches "
            "(search.cache: true), so drop it from the job or set search.cache: false."
        )
    build = functools.partial(_trial_job, cached=space.search.cache, check_paths=check_paths)
    job = check_space(space, raw, build)
    for member, fields in space.members.items():  # each member as its cache is built
        build(apply_params(raw, {"teacher": fields}, space.source), f"{space.source} (members.{member})")
    _check_metric_and_cache(space, job)
    name = space.name or Path(space_path).stem
    return Sweep(space, raw, job, name, Storage(job.storage_path).path(f"sweeps/{name}"), command)


def _trial_job(raw: dict, source: str, cached: bool, check_paths: bool) -> DistillJob:
    """The job a trial runs: with cache on it replays a cache (a stand-in here: `prepare_caches` names
    it), so the keys that need one (`teacher.cache_views`) are checked as the trial will see them."""
    teacher = raw.get("teacher") or {}
    if cached and isinstance(teacher, dict):
        raw = {**raw, "teacher": {**teacher, "cache": CACHE_STANDIN}}
        if isinstance(teacher.get("ensemble"), list):  # member names: the caches the sweep builds
            members = [f"(the sweep's cache of member {name})" for name in teacher["ensemble"]]
            raw["teacher"]["ensemble"] = members
    return distill_job_from_dict(raw, source, check_paths_exist=check_paths)


def _check_metric_and_cache(space: Space, job: DistillJob) -> None:
    if space.metric.startswith("heldout") and job.data.heldout_images < 1:
        raise ConfigError(
            f"{space.source}: metric {space.metric} needs a held-out slice; the job has "
            "data.heldout_images: 0."
        )
    if not space.search.cache:
        return
    for key in (key for key in LISTED if key in space.params):
        kind = domain_parts(space.params[key])[0]
        if kind not in ("grid", "choice"):
            raise ConfigError(
                f"{space.source}: params.{key} takes a {kind} domain, but the sweep's soft-label caches are "
                "built for its values before the trials (search.cache: true); list them with grid or "
                "choice, or set search.cache: false."
            )
    views = [k for k, domain in space.params.items() if _changes_views(k, domain)]
    if views:
        raise ConfigError(
            f"{space.source}: params.{views[0]} changes what the teacher sees (or how many views), so "
            "trials cannot share a soft-label cache; set search.cache: false (each trial then runs "
            "the teacher) or sweep teachers with teacher: {grid: {NAME: …}}."
        )
    slots = [job.teacher.cache_views]
    if "teacher.cache_views" in space.params:
        slots += candidate_values(space.params["teacher.cache_views"])
    views = max_epochs(space, job)
    if max(slots) > views:
        raise ConfigError(
            f"{space.source}: teacher.cache_views reaches {max(slots)}, but the sweep's caches hold "
            f"{views} views per image (the most train.epochs gives); set it to at most {views}."
        )
    cache_plan(space, job)  # two teachers whose labels meet are refused here, before any cache


def _changes_views(key: str, domain) -> bool:
    """Whether a swept key changes the teacher's views (so a shared cache would be wrong): not the
    teacher (a cache per choice), its ensemble (a cache per member), the view settings (a cache per
    value) nor train.epochs (K = the most)."""
    if key in ("teacher", ENSEMBLE, *LISTED):
        return False
    if key in ("loss", "student", "train"):  # whole sections: look at the keys the values set
        return any(
            _changes_views(f"{key}.{k}", None) or f"{key}.{k}" == "train.epochs"
            for v in candidate_values(domain)
            for k in (v or {})
        )
    return not key.startswith(CACHE_NEUTRAL)


def max_epochs(space: Space, job: DistillJob) -> int:
    """The most epochs a trial runs: the job's, or the largest value the space gives train.epochs."""
    swept = candidate_values(space.params["train.epochs"]) if "train.epochs" in space.params else []
    return max(int(v) for v in [job.train.epochs, *swept])


def resolve_names(space: Space, config: dict) -> dict:
    """A Tune config (a point of the space) with named values replaced by what they name."""
    params = dict(config)
    for key, domain in space.params.items():
        values = domain_parts(domain)[1]
        if isinstance(values, dict) and key in params:  # named values: Tune holds the name
            params[key] = values[str(params[key])]
    return params


def cache_label(space: Space, job: DistillJob, config: dict, member: str = "") -> str:
    """The soft-label cache a trial at `config` (a Tune config) replays, `caches/LABEL`: its teacher's
    name (or "teacher"; `member`: "member-NAME", that ensemble member's cache of the same views) and
    each swept view setting's value; mixup_prob only while mixup is on."""
    values = resolve_names(space, config)
    mixup_on = float(values.get("data.mixup_alpha", job.data.mixup_alpha)) > 0
    parts = [f"member-{member}" if member else str(config.get("teacher") or "teacher")] + [
        f"{key.split('.', 1)[1]}{values[key]}"
        for key in space.params
        if key in VIEW_KEYS and (mixup_on or key != "data.mixup_prob")
    ]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(parts))


def cache_plan(space: Space, job: DistillJob) -> tuple[int, dict]:
    """(K, {label: point}): the caches a sweep with `search.cache: true` builds, each with K views
    per image (`max_epochs`), one per distinct label over every teacher choice × listed view value,
    and per view value one of each member an ensemble names; the point (teacher name and view values,
    as Tune holds them; `MEMBER`: the member's name) is where its job is built."""
    keys = [key for key in space.params if key == "teacher" or key in VIEW_KEYS]
    entries = [list(domain_parts(space.params[key])[1]) for key in keys]  # values, or their names
    caches: dict = {}
    for point in (dict(zip(keys, combo)) for combo in itertools.product(*entries)):
        views = {key: value for key, value in point.items() if key != "teacher"}
        members = [{MEMBER: name, **views} for name in ensemble_members(space)]
        for entry in (point, *members):
            label = cache_label(space, job, entry, entry.get(MEMBER, ""))
            made = caches.setdefault(label, entry)
            if _maker(made) != _maker(entry):
                raise ConfigError(
                    f"{space.source}: {_maker(made)} and {_maker(entry)} would share the cache folder "
                    f"caches/{label}; rename one."
                )
    return max_epochs(space, job), caches


def ensemble_members(space: Space) -> list:
    """The members any value of `teacher.ensemble` names, in the order they first appear."""
    values = candidate_values(space.params[ENSEMBLE]) if ENSEMBLE in space.params else []
    return list(dict.fromkeys(name for value in values for name in value))


def _maker(point: dict) -> str:
    """Who makes the cache of a plan's point, in words."""
    return f"member {point[MEMBER]}" if MEMBER in point else f"teacher {point.get('teacher', THE_JOBS)}"


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
    epochs = max_epochs(sweep.space, job)  # ASHA's top rung
    results = run_tuner(trial, sweep.space, sweep.folder, "tune", epochs, concurrency)
    return write_sweep_outputs(sweep, results, caches)


def prepare_caches(sweep: Sweep) -> dict:
    """Cache label → its soft-label cache (built once, or found whole and reused); {} without caches."""
    from .distill import build_cache

    if not sweep.space.search.cache:
        log.info(
            "search.cache: false — every trial runs its own teacher pool: %d epochs of teacher forward passes "
            "over all training images per trial, as many teacher passes as trials",
            sweep.job.train.epochs,
        )
        return {}
    views, plan = cache_plan(sweep.space, sweep.job)
    caches = {}
    for label, point in plan.items():
        job = _cache_job(sweep, point)
        caches[label] = Storage(sweep.folder).path(f"caches/{label}")
        settings = ", ".join(f"{k} {v}" for k, v in point.items() if k not in ("teacher", MEMBER))
        log.info(
            "soft-label cache for %s%s (%d views per image): %s",
            _maker(point),
            f", {settings}" if settings else "",
            views,
            caches[label],
        )
        build_cache(job, out=caches[label], views=views)
    return caches


def _cache_job(sweep: Sweep, point: dict) -> DistillJob:
    """The job a cache of the plan is built from: the trial's at the point's teacher and view values;
    a member's the same with the member as its whole teacher (so the views are the same)."""
    raw = sweep.trial_raw({k: v for k, v in point.items() if k != MEMBER}, "cache", {})
    if MEMBER in point:
        raw = apply_params(raw, {"teacher": sweep.space.members[point[MEMBER]]}, sweep.space.source)
    for key in ("cache_views", "ensemble"):  # a build replays nothing
        if isinstance(raw.get("teacher"), dict):
            raw["teacher"].pop(key, None)
    return distill_job_from_dict(raw, sweep.space.source)


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
