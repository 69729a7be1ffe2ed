"""A Train worker's epoch, as Ray Train's own examples read: batches in, one step each, a meter.

    batches = epoch_batches(shard, BatchPlan(…), epoch, audit)   this worker's batches of epoch e
    meter = EpochMeter(world)
    for batch in meter.timed(batches):
        out = step(batch); meter.add(out, n)                        named sums, the live images/s
    metrics = meter.result()                                        all-reduced over the workers

Design decisions:
- Every worker takes the same number of equal batches (`drop_last`), so no collective waits for a
  worker that ran out of data. With the id audit (`train.record_ids`) the short last batch is read
  too, to be recorded as dropped, and the iterator ends before it: the steps are the same.
- Parquet-like sources (Parquet, packs) shuffle rows within a local buffer, seeded by (seed, epoch).
- `images_per_s` counts all workers' images from the epoch's first batch on; `startup_s`, the wait
  for that first batch (the stream starting: executor, first tasks), is reported apart. The
  slowest worker's times count (all-reduced with max).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from .audit import IdAudit
from .trainer import all_reduce, surface_user_errors

SUMS = ("loss", "kd_loss", "train_agreement")  # averaged over the epoch's images


@dataclass(frozen=True)
class BatchPlan:
    """How a worker reads its shard each epoch."""

    size: int  # images per batch on this worker (the global batch / workers)
    seed: int  # the job's seed: a local shuffle's seed is a function of (seed, epoch)
    local_shuffle: Optional[int] = None  # a local shuffle buffer (rows), for Parquet-like sources

    def shuffle_seed(self, epoch: int) -> Optional[int]:
        return self.seed * 100_003 + epoch if self.local_shuffle else None


def epoch_batches(shard, plan: BatchPlan, epoch: int, audit: Optional[IdAudit] = None) -> Iterator[dict]:
    """This worker's full batches of `epoch` (a user error met upstream re-raised as itself); with
    `audit`, every batch's ids are recorded and the short last one is not yielded."""
    batches = shard.iter_torch_batches(
        batch_size=plan.size,
        drop_last=audit is None,
        local_shuffle_buffer_size=plan.local_shuffle,
        local_shuffle_seed=plan.shuffle_seed(epoch),
        collate_fn=audit.collate if audit else None,
    )
    for batch in surface_user_errors(batches):
        if audit is not None and not audit.keep(batch, plan.size):
            return  # the epoch's short last batch: recorded, not trained (as drop_last)
        yield batch


@dataclass(frozen=True)
class ShardFeed:
    """A worker's shard of the streamed (or replayed) dataset, read epoch by epoch."""

    shard: object  # ray.train.get_dataset_shard("train")
    plan: BatchPlan

    def epoch_batches(self, epoch: int, audit: Optional[IdAudit] = None) -> Iterator[dict]:
        return epoch_batches(self.shard, self.plan, epoch, audit)


class EpochMeter:
    """An epoch's named sums (weighted by images) and its timing, all-reduced by `result()`."""

    def __init__(self, world: int):
        self.world = world
        self.sums = dict.fromkeys(SUMS, 0.0)
        self.images = 0
        self.start, self.first_batch_at = time.perf_counter(), None

    def timed(self, batches) -> Iterator[dict]:
        """`batches`, noting when the first one arrived."""
        for batch in batches:
            self.first_batch_at = self.first_batch_at or time.perf_counter()
            yield batch

    def add(self, out: dict, n: int) -> None:
        """One step's output (`core.step.distill_step`) over `n` images."""
        self.sums["loss"] += out["loss"] * n
        self.sums["kd_loss"] += out.get("kd", out["loss"]) * n
        self.sums["train_agreement"] += out["agreement"] * n
        self.images += n

    @property
    def images_per_s(self) -> float:
        """All workers' images per second so far (assuming theirs match this worker's)."""
        return self.images * self.world / max(time.perf_counter() - self.first_batch_at, 1e-9)

    def result(self) -> dict:
        """The epoch's metrics over all workers: the means, images, images/s and times."""
        end = time.perf_counter()
        first = self.first_batch_at or end
        times = all_reduce(torch.tensor([end - first, first - self.start], dtype=torch.float64), "max")
        totals = all_reduce(torch.tensor([*self.sums.values(), self.images], dtype=torch.float64))
        n = max(float(totals[-1]), 1.0)
        return {
            **{name: float(total) / n for name, total in zip(SUMS, totals)},
            "images": int(totals[-1]),
            "images_per_s": float(totals[-1]) / max(float(times[0]), 1e-9),
            "startup_s": float(times[1]),
            "epoch_seconds": float(times[0] + times[1]),
        }
