"""Stage II on Ray Data: unlabeled images → decode + augment (CPU tasks) → teacher pool → trainers.

    from_items(positions 0…n−1) | read_parquet(uri)  one tiny row per image (Parquet: its bytes)
      └─ map_batches(decode_and_augment)         CPU tasks: epoch e (the `EpochClock`): position →
          │                                      image id in epoch e's order; read bytes (local or
          │                                      URI), decode, render view slot e as uint8; skip +
          │                                      count unreadable files (`BadImageLedger`)
          └─ teacher_pool.add_teacher_features   the run's teacher actors (or Ray Data's actor pool);
              │                                  adds the normalised teacher image feature of the
              │                                  row's view as fp16
              └─ select_columns(image, teacher_feature) ─► TorchTrainer(datasets={"train": …})
                                                 each worker reads its streaming split

Design decisions:
- The pipeline is re-executed every epoch (streaming): no epoch of pixels is ever materialised.
  Its tasks learn the epoch from the `EpochClock` actor (`epochs.py`), so epoch e's order and
  every image's view are functions of (job seed, e, image id) (`epochs.epoch_order`,
  `decode.view_rng`): a re-run draws the same (image, view) pairs epoch by epoch in the same order,
  and a task Ray retries renders the same views again. The workers' batches are the same on a
  re-run only with one worker and `data.preserve_order` (streaming_split hands blocks to whichever
  worker asks first). Parquet sources keep Ray's block-order shuffle (fresh every epoch) and seed
  only the views.
- A fixed teacher pool's actors are the run's (`teacher_pool.teacher_actors`): started once, they
  serve the held-out slice and every epoch, so an epoch's start-up (the trainer's `startup_s`) is
  the stream's own (its executor and first decode tasks). An autoscaled pool is Ray Data's and
  starts again each epoch. Only the held-out slice (a few hundred images, fixed full views) is
  materialised once, teacher features included.
- Bad images are counted exactly by a small actor holding the set of distinct unreadable ids: a
  re-executed epoch or a restarted task records the same ids again without changing the count.
- Decode runs in CPU tasks spread over the cluster, never fused into the teacher actors (the
  teacher's GPUs do not wait on JPEG decoding): decode tasks reserve memory, the actors do not, and
  operators with different resources are not fused.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Optional, Sequence

import numpy as np

from ..data.decode import DecodeOptions, decode_recorded, decode_views
from ..data.sources import ImageSource, is_heldout_bytes
from ..errors import BadImageError
from .epochs import current_epoch, ids_at
from .teacher_pool import add_teacher_features, teacher_actors

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

    from .cluster import on_driver_node

    return ray.remote(BadImageLedger).options(**on_driver_node()).remote()


def decode_and_augment(
    batch: dict,
    size: int,
    mode: str,
    on_bad_image: str,
    ledger=None,
    heldout_fraction: float = 0.0,
    image_column: Optional[str] = None,
    image_field: Optional[str] = None,
    crop_scale_min: float = 0.08,
    seed: Optional[int] = None,
    clock=None,
    ids_ref=None,
    shuffle: bool = True,
    options: DecodeOptions = DecodeOptions(),
) -> dict:
    """Ray Data task: decode a batch of images into views (view slot = the `clock`'s epoch, in a
    run seeded `seed`); skip or fail on bad files.

    A batch holds positions in the epoch's order (mapped to ids through `ids_ref`), ids (the
    held-out slice), or Parquet rows, first reduced to the training or held-out ones."""
    epoch = current_epoch(clock) if clock is not None else 0
    if image_column is not None:
        batch = _parquet_rows(batch, image_column, image_field, mode, heldout_fraction)
    elif "position" in batch:
        batch = {"id": np.asarray(ids_at(batch["position"], ids_ref, seed, epoch, shuffle), dtype=object)}
    rows, bad = decode_views(
        batch, size, mode, seed=seed, slot=epoch, crop_scale_min=crop_scale_min, options=options
    )
    return _without_bad(rows, bad, on_bad_image, ledger)


def decode_recorded_task(
    batch: dict, size: int, on_bad_image: str, ledger=None, options: DecodeOptions = DecodeOptions()
) -> dict:
    """Ray Data task: re-render the recorded views of a batch of soft-label cache rows; skip or fail
    on files that have become unreadable since the cache was built."""
    rows, bad = decode_recorded(batch, size, options)
    return _without_bad(rows, bad, on_bad_image, ledger)


def _without_bad(rows: dict, bad: list, on_bad_image: str, ledger) -> dict:
    """`rows`, after failing on the first unreadable file (`fail`) or counting them all (`skip`)."""
    if bad and on_bad_image == "fail":
        ident, reason = bad[0]
        raise BadImageError(
            f"{ident} is not a readable image ({reason}); set data.on_bad_image=skip "
            "to skip and count such files."
        )
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


def image_dataset(
    job,
    source: ImageSource,
    teacher,
    size: int,
    mode: str,
    ledger,
    cluster_has_gpus: bool,
    clock=None,
    shuffle: bool = True,
    teachers: Sequence = (),
):
    """One Stage II stream (`job`: a DistillJob): rows with uint8 views, their view params and the
    teacher's feature. `mode` "train" (the views and order of the `clock`'s epoch; the image list's
    order without `shuffle`) or "heldout" (full views). `teachers`: the run's teacher actors
    (`teacher_pool.teacher_actors`); without them the stream starts a Ray Data actor pool."""
    import ray

    d = job.data
    fn_kwargs = {
        "size": size,
        "mode": mode,
        "on_bad_image": d.on_bad_image,
        "ledger": ledger,
        "heldout_fraction": source.heldout_fraction,
        "crop_scale_min": d.crop_scale_min,
        "seed": job.seed,
        "clock": clock if mode == "train" else None,
        "shuffle": shuffle and d.shuffle,
        "options": DecodeOptions.of(d),
    }
    paths = source.train_paths if mode == "train" else source.heldout_paths
    blocks = max(1, min(max(4, len(paths) // (4 * d.decode_batch_size)), len(paths)))
    if source.pack:  # the chosen ids' bytes from the pack's shards; Parquet's block-order shuffle
        from .packs import source_rows

        ds = source_rows(source, mode)
        ds = ds.randomize_block_order() if mode == "train" and fn_kwargs["shuffle"] else ds
    elif source.is_parquet:
        ds = ray.data.read_parquet(source.parquet, columns=[source.image_column])
        ds = ds.limit(d.limit) if d.limit and mode == "train" else ds
        if mode == "train" and fn_kwargs["shuffle"]:
            ds = ds.randomize_block_order()  # a fresh block order every epoch; rows stay in their blocks
        fn_kwargs.update(image_column=source.image_column, image_field=source.image_field)
    elif mode == "train":  # positions in the epoch's order; the tasks map them to ids
        ds = ray.data.from_items([{"position": i} for i in range(len(paths))], override_num_blocks=blocks)
        fn_kwargs["ids_ref"] = ray.put(list(paths))
    else:
        ds = ray.data.from_items([{"id": p} for p in paths], override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_and_augment,
        batch_size=d.decode_batch_size,
        batch_format="numpy",
        num_cpus=1,
        memory=d.decode_memory_mb * 1024**2,
        fn_kwargs=fn_kwargs,
    )
    return add_teacher_features(ds, teacher, job.teacher_pool, cluster_has_gpus, teachers)


def train_feed(ds, with_ids: bool = False):
    """Only what the trainer reads (image view + teacher feature; the ids too when the run records
    them, `train.record_ids`); views stay upstream."""
    return ds.select_columns(TRAIN_COLUMNS + ["id"] if with_ids else TRAIN_COLUMNS)


def distill_datasets(
    job,
    source: ImageSource,
    teacher,
    size: int,
    ledger,
    cluster_has_gpus: bool,
    clock,
    running: Optional[contextlib.ExitStack] = None,
) -> dict:
    """{"train": the streamed dataset (epochs told by `clock`), "heldout": the materialised held-out
    slice (when there is one)}; with `running`, a fixed pool's teacher actors start here for the
    whole run and end with `running`."""
    teachers = (
        running.enter_context(teacher_actors(teacher, job.teacher_pool, cluster_has_gpus)) if running else []
    )
    datasets = {
        "train": train_feed(
            image_dataset(
                job, source, teacher, size, "train", ledger, cluster_has_gpus, clock, teachers=teachers
            ),
            with_ids=job.train.record_ids,
        )
    }
    if source.heldout_paths or source.heldout_fraction:
        log.info("teacher features of the held-out slice …")
        heldout = image_dataset(
            job, source, teacher, size, "heldout", ledger, cluster_has_gpus, teachers=teachers
        )
        datasets["heldout"] = train_feed(heldout).materialize()
    return datasets


def bad_images(ledger) -> dict:
    """{image id: reason} of every distinct unreadable image the ledger has seen."""
    import ray

    return ray.get(ledger.items.remote())
