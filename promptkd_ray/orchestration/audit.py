"""The id audit (`train.record_ids`): which image ids each Train worker received, per epoch.

    audit = IdAudit()                            in a worker's epoch: collate with `audit.collate`,
    audit.keep(batch, size) / audit.write(...)   record each batch, write the epoch's file
    recorded_ids(run, epoch)                     all ranks' ids of an epoch: {"trained", "dropped"}

Design decisions:
- Evidence, not a statistic: the files list every id, so "every image reached the trainers exactly
  once this epoch" is a set comparison, after actor deaths, node losses and worker restarts alike.
- A worker's epoch file is written when its epoch ends (one atomic write through the storage
  layer); an epoch re-run after a restart overwrites the aborted attempt's file.
- The epoch's short last batch (which `drop_last` discards) is recorded as "dropped", not trained.
"""

from __future__ import annotations

import json

import torch

from ..storage import Storage


def keeping_ids():
    """An `iter_torch_batches` collate function: numpy columns → tensors, the `id` column kept as a
    list of str (the default collate cannot hold strings)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class KeepIds(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> dict:
            out = {k: torch.as_tensor(v) for k, v in batch.items() if k != "id"}
            out["id"] = [str(i) for i in batch["id"]]
            return out

    return KeepIds()


class IdAudit:
    """`train.record_ids`: the image ids one worker received in an epoch, trained or dropped as the
    epoch's short last batch, written to `ids/epoch_EEE/rank_R.json` in the run — the evidence that
    every image reached the trainers exactly once per epoch (after failures and restarts, too: a
    re-run epoch overwrites its files)."""

    def __init__(self):
        self.trained, self.dropped = [], []
        self.collate = keeping_ids()

    def keep(self, batch: dict, size: int) -> bool:
        full = len(batch["id"]) == size
        (self.trained if full else self.dropped).extend(batch["id"])
        return full

    def write(self, run: Storage, epoch: int, rank: int) -> None:
        run.write_text(
            f"ids/epoch_{epoch:03d}/rank_{rank}.json",
            json.dumps({"epoch": epoch, "rank": rank, "trained": self.trained, "dropped": self.dropped}),
        )


def recorded_ids(run: Storage, epoch: int) -> dict:
    """{"trained": [...], "dropped": [...]} over all ranks of a `train.record_ids` run's epoch."""
    _, files = run.list_dir(f"ids/epoch_{epoch:03d}")
    out = {"trained": [], "dropped": []}
    for name in sorted(files):
        part = json.loads(run.read_text(f"ids/epoch_{epoch:03d}/{name}"))
        out["trained"] += part["trained"]
        out["dropped"] += part["dropped"]
    return out
