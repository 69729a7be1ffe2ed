"""Where Ray runs: connect to a cluster (or start a local one), what it offers, and the user's
error inside a Ray failure.

Design decisions:
- `ray.address: ""` connects to `RAY_ADDRESS` (set by `ray job submit`) and otherwise starts a new
  local cluster (never silently joins some other cluster found on the machine). A local cluster
  gets enough logical CPUs for the Train workers + teacher pool + reads: with fewer, the actor pool
  and the Train workers wait on each other for ever (docs/architecture.md, "Running here").
- Ray's own chatter (worker start-up, actor warnings, Ray Data and Ray Train logs) goes to Ray's
  log files (`/tmp/ray/session_latest/logs` on the head), not to the console: the workers' output
  is not forwarded to the driver (`log_to_driver=False`). What a user sees comes from
  `orchestration.progress`; `-v` forwards everything again.
- The run's bookkeeping actors (the bad-image ledger, the epoch clock, the progress board) live on
  the driver's node (`on_driver_node`), as Ray Data's split coordinator does: a node lost elsewhere
  (a teacher's, a trainer's) must not take them along and end a run that could go on.
- GPU use is decided from what the cluster offers, never from the driver's own CUDA (a CPU head
  node drives GPU workers on a cluster).
- A `PromptKDError` raised in a worker or a Ray Data task reaches the driver wrapped
  (RayTaskError, Ray Train's WorkerGroupError, a chain of causes); `user_error_in` finds it, so the
  CLI prints its one sentence and not Ray's traceback.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Optional

from ..errors import PromptKDError

log = logging.getLogger(__name__)

RAY_LOG_DIR = "/tmp/ray/session_latest/logs"


def connect(ray_config, cpus_needed: float) -> None:
    """Connect to the job's cluster, or start a local one with at least `cpus_needed` logical CPUs."""
    import ray

    if not ray.is_initialized():
        _start_or_join(ray_config, cpus_needed)
    configure_ray_data()


def _start_or_join(ray_config, cpus_needed: float) -> None:
    import ray

    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    quiet = {"log_to_driver": verbose, "logging_level": logging.DEBUG if verbose else logging.WARNING}
    address = ray_config.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **quiet)
    else:
        num_cpus = ray_config.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed))
        log.info("starting a local Ray cluster with %d logical CPUs (Ray's logs: %s)", num_cpus, RAY_LOG_DIR)
        # Ray expects to start at most one worker process per physical core at a time and warns beyond
        # 4×; the logical CPUs we overstate (see above) are the concurrency we ask for.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=ray_config.object_store_mb * 1024**2 or None,
            include_dashboard=False,
            _system_config={"worker_maximum_startup_concurrency": num_cpus},
            **quiet,
        )


def on_driver_node() -> dict:
    """Actor options for a run's bookkeeping actor: no CPU, on the node of the process that makes it
    (the driver; in a sweep, the trial), never elsewhere."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def keep_working_directory() -> None:
    """Ray Train workers and Tune trials keep the driver's working directory, as Ray's other tasks
    do, instead of moving into a folder of Ray's: a job's relative paths (`storage_path: runs`, a
    data root, a weights file) then mean the same in every process. Set on the driver, before a
    TorchTrainer or Tuner is made (both read it there and pass it on); a user's own setting wins."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")


def configure_ray_data() -> None:
    """The driver's Ray Data context, which every dataset made afterwards carries to its tasks:
    errors raised in our map functions travel as themselves (not as Ray Data's UserCodeException,
    which keeps only their text), and Ray Data's own progress bars and INFO lines are off (ours
    take their place)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("ray.data", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)
        nagger = logging.getLogger("ray.data._internal.progress")
        if not any(isinstance(f, _NoBarsNag) for f in nagger.filters):
            nagger.addFilter(_NoBarsNag())
        quiet_ray_data_warnings()


def quiet_ray_data_warnings() -> None:
    """Ray Data's `UserWarning`s stay off the console: advice meant for Ray Data's own users, e.g.
    "The maximum number of concurrent tasks for 'MapBatches(...)' is set to 2, but the operator only
    received 1 input(s)", which a small epoch or a held-out slice triggers by design. Installed in
    each process that connects (the driver, a Tune trial), where Ray Data runs its executors for
    the driver; Ray's own actors write to Ray's log files, not the console. `-v` leaves the warnings
    on, as it does Ray's logs; other warnings, and Ray Data's callers' own, stay."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data\.")


class _NoBarsNag(logging.Filter):
    """Ray Data warns that its progress bars are off, which is what we asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def warn_missing_resources(wanted: dict) -> None:
    """Custom resources no node offers (yet): the pool or the workers wait for an autoscaler."""
    import ray

    offered = ray.cluster_resources()
    for name in sorted(k for k in wanted if k not in offered):
        log.warning(
            "no node of this cluster offers the resource %r (asked for by the job); the teacher pool or "
            "the Train workers wait until an autoscaler adds such a node",
            name,
        )


def cpus_needed(workers, pool=None) -> float:
    """Train workers + teacher actors + 2 for decode tasks and Ray's own actors."""
    need = workers.num_workers * workers.cpus_per_worker + 2
    if pool is not None:
        need += max(pool.size, pool.max_size) * pool.num_cpus
    return need


def user_error_in(exc: BaseException) -> Optional[PromptKDError]:
    """The PromptKDError inside a (possibly Ray-wrapped) exception, or None."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, PromptKDError) and type(current).__module__.startswith("promptkd_ray"):
            return current  # not Ray's RayTaskError(…) copy of the class, whose text is a traceback
        todo += [
            getattr(current, "cause", None),
            current.__cause__,
            current.__context__,
            getattr(current, "controller_failure", None),
            *getattr(current, "worker_failures", {}).values(),
        ]
    return None
