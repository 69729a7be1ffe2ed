"""One Ray Train `TorchTrainer` for both stages, and a worker's view of it.

    fit(loop, plan, job, workers, datasets)     driver: builds the trainer, runs it, unwraps errors
    this_worker()                               in `loop(plan)`: rank, world size, device
    dataset_shard(name), prepare_model(model), all_reduce(tensor), gradient_averager(params)

Design decisions:
- The recipe's loop receives one frozen plan dataclass (`functools.partial(loop, plan)`), never a
  dict of strings: the plan says everything a worker needs and nothing else.
- Ray Train V2: `RunConfig(name, storage_path)` is the run folder; re-running the same job resumes
  from its last checkpoint (`FailureConfig` restarts the worker group the same way after a worker
  failure). Checkpoints kept: the job's `train.checkpoints_to_keep`.
- Datasets: "train" is split over the workers (`streaming_split`, equal shards); every other
  dataset (the held-out slice) goes whole to each worker. The ingest options are Ray Data's
  current ones, passed explicitly (Ray's default builds them through a deprecated setter), with
  `preserve_order` when the job asks for reproducible batches.
- GPUs: `train.use_gpu: null` uses them when the cluster offers them.
- Workers keep the driver's working directory (`cluster.keep_working_directory`): Ray Train would
  otherwise move them into a folder of its own, and a job's relative `storage_path: runs` would
  land there (it did, for Stage I's artifacts).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..storage import absolute
from .cluster import has_gpus, keep_working_directory, user_error_in


def fit(
    loop: Callable,
    plan,
    job,
    workers,
    datasets: Optional[dict] = None,
    preserve_order: bool = False,
    callbacks: Sequence = (),
):
    """Run `loop(plan)` on the job's Ray Train workers; → the Ray Train Result. A user error raised
    by a worker or a Ray Data task is re-raised as itself (one sentence). `callbacks`: Ray Train
    callbacks (a Tune trial passes `TuneReportCallback`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = has_gpus() if workers.use_gpu is None else workers.use_gpu
    keep_working_directory()
    # Ray Train hands this variable of the calling process to its controller, which polls the workers
    # that often: a run's end (and each report's arrival) waits up to one poll (Ray's default: 2 s)
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(workers.poll_s)
    trainer = TorchTrainer(
        functools.partial(loop, plan),
        scaling_config=ScalingConfig(
            num_workers=workers.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": workers.cpus_per_worker, **workers.resources_per_worker},
        ),
        run_config=RunConfig(
            name=job.name,
            storage_path=absolute(job.storage_path),
            failure_config=FailureConfig(max_failures=workers.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=workers.checkpoints_to_keep),
            callbacks=list(callbacks),
        ),
        datasets=datasets or None,
        dataset_config=_data_config(preserve_order, "train" in datasets) if datasets else None,
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        user = user_error_in(exc)
        if user is None:
            raise
        raise user from None
    if result.error is not None:
        raise user_error_in(result.error) or result.error
    return result


def _data_config(preserve_order: bool, split_train: bool = True):
    from ray.data import DataContext, ExecutionOptions
    from ray.train import DataConfig

    current = DataContext.get_current().execution_options
    options = ExecutionOptions(
        resource_limits=current.resource_limits,
        preserve_order=preserve_order or current.preserve_order,
        verbose_progress=current.verbose_progress,
    )
    return DataConfig(datasets_to_split=["train"] if split_train else [], execution_options=options)


@dataclass(frozen=True)
class Worker:
    rank: int  # 0 … world - 1; rank 0 reports checkpoints and writes TensorBoard
    world: int  # number of workers
    device: torch.device  # this worker's device (its GPU, or the CPU)


def this_worker() -> Worker:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return Worker(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())


def dataset_shard(name: str):
    import ray.train

    return ray.train.get_dataset_shard(name)


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around `model` (gloo on CPU, NCCL on GPU); the model itself with one worker."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over all workers (`op`: "sum", "max" or "min"); a no-op with one worker."""
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        torch.distributed.all_reduce(
            tensor,
            op={
                "sum": torch.distributed.ReduceOp.SUM,
                "max": torch.distributed.ReduceOp.MAX,
                "min": torch.distributed.ReduceOp.MIN,
            }[op],
        )
    return tensor


def gradient_averager(params: list, world: int) -> Optional[Callable[[], None]]:
    """A hook for after `backward()` that averages the gradients of `params` over the workers
    (one all_reduce per tensor; Stage I's few prompt tensors need no DDP wrapper); None alone."""
    if world <= 1:
        return None

    def hook() -> None:
        for p in params:
            if p.grad is not None:
                all_reduce(p.grad)
                p.grad.div_(world)

    return hook


def surface_user_errors(batches):
    """Iterate `batches`, re-raising a user error met upstream (e.g. a Ray Data decode task with
    `data.on_bad_image: fail`) as itself rather than inside Ray's wrapped task error, so that it
    crosses to the driver as one sentence."""
    try:
        yield from batches
    except Exception as exc:
        user = user_error_in(exc)
        if user is None:
            raise
        raise user from None
