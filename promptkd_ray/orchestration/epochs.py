"""Which epoch the stream is in, and that epoch's image order — for Ray Data tasks that outlive no epoch.

    clock                                    an `EpochClock` actor (`bookkeeping.py`); rank 0 sets it
    set_epoch(clock, e)                      before any worker reads epoch e (trainer, cache build)
    current_epoch(clock)                     in a Ray Data task: the epoch it is producing rows for
    epoch_order(seed, epoch, n, shuffle)     epoch e's order of n images: a permutation of (seed, e)
    ids_at(positions, ids_ref, …)            in a task: positions in epoch e's order → image ids

Design decisions:
- Ray Train splits ONE dataset over the workers and re-executes it every epoch; its tasks cannot be
  told the epoch through their arguments (fixed when the dataset is built). So the epoch lives in
  an actor: rank 0 sets it when every worker has finished the previous epoch (after the epoch's
  all-reduce) and before it starts reading the next one; Ray Data starts an epoch's execution only
  when every worker has asked for it (streaming_split's barrier), so no task of epoch e reads e − 1
  or e + 1. One dataset keeps one split coordinator (one process) for the whole run.
- Order without a shuffle stage: the training rows are positions 0 … n−1; a task maps position p
  to image `order[p]` of its epoch. The permutation is a function of (seed, epoch) alone, so a
  re-run reads the images in the same order, and no all-to-all stage runs (Ray Data's sort took
  75 s per epoch for 4,500 rows on 2 cores; this costs a lookup).
- The image ids reach the tasks once, through the object store (`ids_ref`); each worker process
  keeps the ids and the current epoch's permutation, so a task costs one small actor call.
"""

from __future__ import annotations

import numpy as np


def set_epoch(clock, epoch: int) -> None:
    import ray

    ray.get(clock.set.remote(epoch))


def current_epoch(clock) -> int:
    import ray

    return int(ray.get(clock.get.remote()))


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool = True) -> np.ndarray:
    """Epoch `epoch`'s order of `n` images in a run seeded `seed` (the identity without `shuffle`)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


_PROCESS_CACHE: dict = {}  # per worker process: the image ids, and the latest epoch's order


def all_ids(ids_ref) -> list:
    """The image ids in the object store at `ids_ref`, fetched once per process."""
    import ray

    key = ids_ref.hex()
    if _PROCESS_CACHE.get("ids_key") != key:
        _PROCESS_CACHE.clear()
        _PROCESS_CACHE.update(ids_key=key, ids=ray.get(ids_ref))
    return _PROCESS_CACHE["ids"]


def ids_at(positions, ids_ref, seed: int, epoch: int, shuffle: bool) -> list:
    """The image ids at `positions` of epoch `epoch`'s order (`ids_ref`: the ids, in the object store)."""
    ids = all_ids(ids_ref)
    if _PROCESS_CACHE.get("order_key") != (seed, epoch, shuffle):
        _PROCESS_CACHE.update(
            order_key=(seed, epoch, shuffle), order=epoch_order(seed, epoch, len(ids), shuffle)
        )
    order = _PROCESS_CACHE["order"]
    return [ids[order[int(p)]] for p in positions]
