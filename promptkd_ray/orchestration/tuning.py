"""Ray Tune for a sweep: the space as Tune domains, the searcher, the scheduler, the tuner (new or
restored), and how many trials the cluster holds at once.

    tune_param_space(space)                   dotted key → tune.grid_search / choice / uniform / …
    run_tuner(trial, space, folder, …)        Tuner.restore when the sweep folder has one, else a new Tuner
    trials_the_cluster_holds(job)             default max_concurrent_trials

Design decisions (Ray 2.60, Train V2):
- A trial is a function trainable that runs the Stage II recipe, whose TorchTrainer carries
  `TuneReportCallback`: each epoch's report (rank 0's all-reduced metrics) is one Tune result, so
  ASHA (`time_attr = training_iteration` = epochs) can stop a trial after any epoch. The Train
  workers get their own placement group, outside the trial's; the trial function itself asks for
  a sliver of a CPU (Tune refuses zero), so concurrency is set from what the workers need.
- The sweep's Tune folder is fixed (`storage_path/sweeps/NAME/tune`): running the same command
  again restores it (`Tuner.restore`, errored trials resumed) and finished trials are not re-run.
  A trial that fails is recorded in its result, never fatal to the sweep.
- Named values (`teacher: {grid: {zeroshot: …, promptsrc: …}}`, or under choice) go to Tune as
  their names, so trial names, tables and Optuna see labels, not nested dicts.
- The live table (`live_table`) shows each trial's epoch and the space's metric. Tune's newer
  console (on by default) picks its columns from the first keys of a result, which are not those,
  and ignores a given reporter; a sweep therefore asks for Tune's classic console
  (`RAY_AIR_NEW_OUTPUT=0`, unless the user set it) and gives it a `CLIReporter`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable

from ..config.space import Space, domain_parts
from ..errors import ConfigError
from .cluster import keep_working_directory

log = logging.getLogger(__name__)
TRIAL_CPU = 0.1  # what a trial's driver function reserves (it only waits on its TorchTrainer)


def epoch_reporter(epochs: int):
    """In a trial: Ray Train's TuneReportCallback for every epoch but the last, which the trial
    reports itself once the run has written its student (Tune may stop a trial at any result, and
    at the last epoch that would cut the artifact off)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class AllButTheLastEpoch(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and int(metrics[0].get("epoch", -1)) + 1 < epochs:
                super().after_report(run_context, metrics, checkpoint)

    return AllButTheLastEpoch()


def current_trial_id() -> str:
    """In a trial: its Tune id."""
    from ray import tune

    return tune.get_context().get_trial_id()


def report_to_tune(metrics: dict) -> None:
    """In a trial: one result to Tune."""
    from ray import tune

    tune.report(metrics)


ORPHAN_SWEEP_S = 1.0  # how often the sweep driver looks for a stopped trial's Train workers
ORPHAN_WAIT_S = 15.0  # at the sweep's end, how long it waits for stopped trials' controllers to die


def release_stopped_trials():
    """A Tune callback (sweep driver): remove the placement groups of stopped trials' Train workers.

    A Train worker group's placement group is created by the trial's Train controller, an actor, and
    Ray removes such a group only when its creator's job ends too: the sweep driver's. When ASHA
    stops a trial, its controller dies with it — and a controller still alive for a moment may see its
    workers go and start a new group (its failure policy) before it dies. So, every second and at the
    sweep's end (waiting a little for controllers that are dying), every group whose creator actor has
    died is removed; groups of live actors, of drivers and detached ones are never touched. (Ray
    Train's own cleaner needs the state API, which a cluster without the dashboard lacks.)"""
    import time

    from ray import tune

    class ReleaseStoppedTrials(tune.Callback):
        def __init__(self):
            self._last = 0.0

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self._last >= ORPHAN_SWEEP_S:
                self._last = time.monotonic()
                remove_orphaned_placement_groups()

        def on_experiment_end(self, trials, **info):
            deadline = time.monotonic() + ORPHAN_WAIT_S
            while remove_orphaned_placement_groups() and time.monotonic() < deadline:
                time.sleep(0.5)

    return ReleaseStoppedTrials()


def remove_orphaned_placement_groups() -> int:
    """Remove this job's live placement groups whose creator actor has died (not detached ones);
    → how many of its live groups were created by actors still alive (0: none can be orphaned next)."""
    import ray
    from ray._private.state import state
    from ray._raylet import PlacementGroupID
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    alive, job = 0, bytes.fromhex(ray.get_runtime_context().get_job_id())
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = PlacementGroupTableData.FromString(raw)
        # a driver's groups carry the nil actor id
        by_actor = group.creator_actor_id and not ray.ActorID(group.creator_actor_id).is_nil()
        mine = group.creator_job_id == job and by_actor and not group.is_detached
        if not mine or group.state == PlacementGroupTableData.REMOVED:
            continue
        if not (group.creator_actor_dead or _actor_dead(state, group.creator_actor_id)):
            alive += 1
            continue
        remove_placement_group(PlacementGroup(PlacementGroupID(group.placement_group_id)))
        log.info(
            "released the placement group %s of a stopped trial's Train workers",
            group.placement_group_id.hex()[:12],
        )
    return alive


def _actor_dead(state, actor_id: bytes) -> bool:
    """Whether the actor table records this actor as dead. A group created by a controller that was
    already dying (its trial ended while it retried its worker group) never gets the group's
    creator_actor_dead flag: the GCS sets it only when the creator dies after the group exists."""
    return state.actor_table(actor_id.hex()).get("State") == "DEAD"


def tune_param_space(space: Space) -> dict:
    from ray import tune

    out = {}
    for key, domain in space.params.items():
        kind, values = domain_parts(domain)
        if isinstance(values, dict):
            values = list(values)  # named values: Tune sees the names
        out[key] = (
            {"grid": tune.grid_search, "choice": tune.choice}[kind](values)
            if kind in ("grid", "choice")
            else {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](
                *values
            )
        )
    return out


def trial_cpus(job) -> float:
    """CPUs one trial holds: its Train workers, one for its reads, TRIAL_CPU for its driver function."""
    return job.train.num_workers * job.train.cpus_per_worker + 1 + TRIAL_CPU


def trials_the_cluster_holds(job) -> int:
    """Trials whose Train workers fit in the cluster at once: CPUs (plus one per trial for its reads
    and TRIAL_CPU for its driver), GPUs when the workers use them, and the workers' custom resources."""
    import ray

    from .cluster import has_gpus

    t, cluster = job.train, ray.cluster_resources()
    per_trial = {"CPU": trial_cpus(job), **{k: t.num_workers * v for k, v in t.resources_per_worker.items()}}
    if t.use_gpu or (t.use_gpu is None and has_gpus()):
        per_trial["GPU"] = t.num_workers
    return max(1, min(math.floor(cluster.get(k, 0) / need) for k, need in per_trial.items() if need > 0))


def _searcher(space: Space):
    if space.search.algorithm != "optuna":
        return None
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError(
            f"{space.source}: search.algorithm optuna needs Optuna: pip install "
            "'promptkd_ray[tune]' (or optuna)."
        ) from None
    return OptunaSearch(metric=space.metric, mode=space.mode, seed=space.search.seed)


def _scheduler(space: Space, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if space.scheduler.kind == "fifo":
        return FIFOScheduler()
    s = space.scheduler
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=space.metric,
        mode=space.mode,
        max_t=s.max_epochs or epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def live_table(space: Space):
    """Tune's console table for a sweep: the swept keys, each trial's epoch (Tune's
    `training_iteration`: one result per epoch, also for a restored trial, which re-reports its
    epochs) and the space's metric, the best trial named by that metric."""
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={"training_iteration": "epoch", space.metric: space.metric},
        metric=space.metric,
        mode=space.mode,
        max_report_frequency=30,
    )


def _callbacks(space: Space, name: str) -> list:
    if not space.tracking.mlflow_uri:
        return []
    try:
        import mlflow  # noqa: F401
        from ray.air.integrations.mlflow import MLflowLoggerCallback
    except ImportError:
        raise ConfigError(
            f"{space.source}: tracking.mlflow_uri needs MLflow: pip install 'promptkd_ray[tune]' "
            "(or mlflow-skinny)."
        ) from None
    return [
        MLflowLoggerCallback(
            tracking_uri=space.tracking.mlflow_uri,
            experiment_name=space.tracking.experiment or name,
            save_artifact=False,
        )
    ]


def run_tuner(trial: Callable, space: Space, tune_root: str, name: str, epochs: int, concurrency: int):
    """Run (or resume) the sweep; → Tune's ResultGrid."""
    from ray import tune

    keep_working_directory()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the newer console ignores `live_table`
    trainable = tune.with_resources(trial, {"CPU": TRIAL_CPU})
    path = f"{tune_root.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        log.info("resuming the sweep at %s: finished trials are kept, unfinished ones resume", path)
        return tune.Tuner.restore(path, trainable, resume_errored=True).fit()
    samples = space.search.samples
    tuner = tune.Tuner(
        trainable,
        param_space=tune_param_space(space),
        tune_config=tune.TuneConfig(
            num_samples=samples,
            max_concurrent_trials=concurrency,
            scheduler=_scheduler(space, epochs),
            search_alg=_searcher(space),
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=tune_root,
            callbacks=[release_stopped_trials(), *_callbacks(space, name)],
            failure_config=tune.FailureConfig(max_failures=0),
            progress_reporter=live_table(space),
            verbose=1,
        ),
    )
    return tuner.fit()
