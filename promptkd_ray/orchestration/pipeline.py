"""Stage II on Ray Data: unlabeled images → decode + augment (CPU tasks) → teacher pool → trainers.

    from_items(paths) | read_parquet(uri)            one row per image (paths are tiny rows)
      └─ random_shuffle | randomize_block_order      a new order every epoch (paths | Parquet blocks)
          └─ map_batches(decode_and_augment)         CPU tasks: read bytes (local or URI), decode,
              │                                      draw a view, render it as uint8; skip + count
              │                                      unreadable files in the `BadImageLedger`
              └─ teacher_pool.add_teacher_features   actor pool; adds the normalised teacher image
                  │                                  feature of the row's view as fp16
                  └─ select_columns(image, teacher_feature) ─► TorchTrainer(datasets={"train": …})
                                                     each worker reads its streaming split

Design decisions:
- The pipeline is re-executed every epoch (streaming): new views each epoch, and no epoch of
  pixels is ever materialised. The price: Ray Data starts the teacher actors again each epoch
  (seconds; the trainer reports it as `startup_s`), negligible on real epochs, visible on toy ones.
  Only the held-out slice (a few hundred images, fixed full views) is materialised once, teacher
  features included.
- Bad images are counted exactly by a small actor holding the set of distinct unreadable ids: a
  re-executed epoch or a restarted task records the same ids again without changing the count.
- Decode runs in CPU tasks spread over the cluster, never fused into the teacher actors (the
  teacher's GPUs do not wait on JPEG decoding): decode tasks reserve memory, the actors do not, and
  operators with different resources are not fused.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Optional

import numpy as np

from ..data.decode import decode_views
from ..data.sources import ImageSource, is_heldout_bytes
from ..errors import BadImageError
from .teacher_pool import add_teacher_features

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["image", "teacher_feature"]


class BadImageLedger:
    """Distinct unreadable image ids seen by the decode tasks (a Ray actor; see `start_ledger`)."""

    def __init__(self):
        self._bad: dict[str, str] = {}

    def record(self, bad: list) -> int:
        for ident, reason in bad:
            self._bad.setdefault(ident, reason)
        return len(self._bad)

    def count(self) -> int:
        return len(self._bad)

    def items(self) -> dict[str, str]:
        return dict(self._bad)


def start_ledger():
    import ray

    return ray.remote(num_cpus=0)(BadImageLedger).remote()


def decode_and_augment(batch: dict, size: int, mode: str, on_bad_image: str, ledger=None,
                       heldout_fraction: float = 0.0, image_column: Optional[str] = None,
                       image_field: Optional[str] = None, crop_scale_min: float = 0.08) -> dict:
    """Ray Data task: decode a batch of paths (or Parquet bytes) into views; skip or fail on bad files.

    Parquet batches are first reduced to the training or held-out rows (`heldout_fraction`)."""
    if image_column is not None:
        batch = _parquet_rows(batch, image_column, image_field, mode, heldout_fraction)
    rows, bad = decode_views(batch, size, mode, crop_scale_min=crop_scale_min)
    if bad and on_bad_image == "fail":
        ident, reason = bad[0]
        raise BadImageError(f"{ident} is not a readable image ({reason}); set data.on_bad_image=skip "
                            "to skip and count such files.")
    for ident, reason in bad:
        log.warning("skipping unreadable image %s (%s)", ident, reason)
    if bad and ledger is not None:
        import ray

        ray.get(ledger.record.remote(bad))
    return rows


def _parquet_rows(batch: dict, column: str, field: Optional[str], mode: str, fraction: float) -> dict:
    """Parquet columns → {"id", "bytes"}, keeping the rows of `mode` (train or held-out)."""
    values = batch[column]
    blobs = [v[field] if field is not None else v for v in values]
    blobs = [bytes(b) if b is not None else b"" for b in blobs]
    keep = [i for i, b in enumerate(blobs) if is_heldout_bytes(b, fraction) == (mode == "heldout")]
    ids = [f"parquet:{hashlib.sha1(blobs[i]).hexdigest()[:16]}" for i in keep]
    return {"id": np.asarray(ids, dtype=object), "bytes": np.asarray([blobs[i] for i in keep], dtype=object)}


def _read_rows(source: ImageSource, paths: tuple[str, ...], limit: int, num_blocks: int):
    import ray

    if source.is_parquet:
        ds = ray.data.read_parquet(source.parquet, columns=[source.image_column])
        return ds.limit(limit) if limit else ds
    return ray.data.from_items([{"id": p} for p in paths], override_num_blocks=max(1, min(num_blocks, len(paths))))


def image_dataset(job, source: ImageSource, teacher, size: int, mode: str, ledger, cluster_has_gpus: bool):
    """The Ray Dataset of one Stage II stream (`job`: a DistillJob): rows with uint8 views, their
    view params and the teacher's feature. `mode` "train" (random views, shuffled) or "heldout"
    (full views)."""
    d = job.data
    paths = source.train_paths if mode == "train" else source.heldout_paths
    blocks = max(4, len(paths) // (4 * d.decode_batch_size))
    ds = _read_rows(source, paths, d.limit if mode == "train" else 0, blocks)
    if mode == "train" and d.shuffle:  # paths: a full shuffle of tiny rows; Parquet: block order only
        ds = ds.randomize_block_order() if source.is_parquet else ds.random_shuffle()
    parquet = {"image_column": source.image_column, "image_field": source.image_field} if source.is_parquet else {}
    ds = ds.map_batches(decode_and_augment, batch_size=d.decode_batch_size, batch_format="numpy", num_cpus=1,
                        memory=d.decode_memory_mb * 1024**2,
                        fn_kwargs={"size": size, "mode": mode, "on_bad_image": d.on_bad_image, "ledger": ledger,
                                   "heldout_fraction": source.heldout_fraction,
                                   "crop_scale_min": d.crop_scale_min, **parquet})
    return add_teacher_features(ds, teacher, job.teacher_pool, cluster_has_gpus)


def train_feed(ds):
    """Only what the trainer reads (image view + teacher feature); ids and views stay upstream."""
    return ds.select_columns(TRAIN_COLUMNS)


def distill_datasets(job, source: ImageSource, teacher, size: int, ledger, cluster_has_gpus: bool) -> dict:
    """{"train": the streamed dataset, "heldout": the materialised held-out slice (when there is one)}."""
    datasets = {"train": train_feed(image_dataset(job, source, teacher, size, "train", ledger, cluster_has_gpus))}
    if source.heldout_paths or source.heldout_fraction:
        log.info("teacher features of the held-out slice …")
        heldout = image_dataset(job, source, teacher, size, "heldout", ledger, cluster_has_gpus)
        datasets["heldout"] = train_feed(heldout).materialize()
    return datasets


def bad_images(ledger) -> dict:
    """{image id: reason} of every distinct unreadable image the ledger has seen."""
    import ray

    return ray.get(ledger.items.remote())
