"""Stage II on Ray Data: unlabeled images → decode + augment (CPU tasks) → teacher pool → trainers.

    source_rows(stream, mode)                    one tiny row per image, by the source's kind: paths →
      │                                          positions 0…n−1; Parquet, a pack → rows with bytes
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
- A run's stream is one frozen `Stream` (source, teacher, pool, decode spec), built once by the
  recipe; the actors it reports to are one `bookkeeping.Bookkeeping`.
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
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..core.artifacts import ModelRef
from ..data.decode import DecodeOptions, decode_recorded, decode_views
from ..data.mixup import Mixup, with_partners
from ..data.sources import ImageSource, PackSource, ParquetSource, PathSource, is_heldout_bytes
from ..errors import BadImageError, ConfigError
from .bookkeeping import Bookkeeping
from .epochs import all_ids, current_epoch, ids_at
from .packs import source_rows as pack_source_rows
from .teacher_pool import add_teacher_features, teacher_actors

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["image", "teacher_feature"]


@dataclass(frozen=True)
class DecodeSpec:
    """How the decode tasks turn a run's images into views (everything but the epoch)."""

    size: int  # view side in pixels
    seed: int = 0  # the job's seed: views and epoch orders are functions of (seed, epoch, image)
    shuffle: bool = True  # data.shuffle: a fresh order every epoch
    crop_scale_min: float = 0.08  # RandomResizedCrop's lower scale bound
    on_bad_image: str = "skip"  # "skip" (count) or "fail"
    options: DecodeOptions = DecodeOptions()  # pixel limit, EXIF rule
    batch_size: int = 64  # images per decode task
    memory_mb: int = 0  # memory each decode task reserves
    mixup: Mixup = Mixup()  # data.mixup_alpha / mixup_prob (partners: the job's training ids, in the tasks)

    @classmethod
    def of(cls, job, size: int) -> "DecodeSpec":
        """The spec of a DistillJob (its seed and `data` section) at `size` px."""
        d = job.data
        return cls(
            size,
            job.seed,
            d.shuffle,
            d.crop_scale_min,
            d.on_bad_image,
            DecodeOptions.of(d),
            d.decode_batch_size,
            d.decode_memory_mb,
            Mixup(d.mixup_alpha, d.mixup_prob),
        )


@dataclass(frozen=True)
class Stream:
    """What a run's streams are made of: the images, the teacher that labels them and how they are
    decoded; `gpus` and `teachers` say where the teacher runs (the run's own actors, or none)."""

    source: ImageSource
    teacher: ModelRef
    pool: object  # the job's teacher_pool section
    decode: DecodeSpec
    gpus: bool = False  # the cluster offers GPUs
    teachers: tuple = ()  # the run's teacher actors (`teacher_pool.teacher_actors`)


@dataclass(frozen=True)
class EpochPositions:
    """Loose files in training: positions in epoch e's order → the image ids (`ids_ref`: the paths)."""

    ids_ref: object

    def rows(self, batch: dict, mode: str, spec: DecodeSpec, epoch: int) -> dict:
        ids = ids_at(batch["position"], self.ids_ref, spec.seed, epoch, spec.shuffle)
        return {"id": np.asarray(ids, dtype=object)}

    def partners(self) -> list:
        """The job's training image ids (mixup draws partners from them)."""
        return all_ids(self.ids_ref)


@dataclass(frozen=True)
class ParquetColumn:
    """Parquet rows → {"id", "bytes"}, keeping the rows of the mode (training or held out)."""

    column: str
    field: Optional[str]
    heldout_fraction: float

    def rows(self, batch: dict, mode: str, spec: DecodeSpec, epoch: int) -> dict:
        blobs = [v[self.field] if self.field is not None else v for v in batch[self.column]]
        blobs = [bytes(b) if b is not None else b"" for b in blobs]
        keep = [
            i
            for i, b in enumerate(blobs)
            if is_heldout_bytes(b, self.heldout_fraction) == (mode == "heldout")
        ]
        ids = [f"parquet:{hashlib.sha1(blobs[i]).hexdigest()[:16]}" for i in keep]
        return {
            "id": np.asarray(ids, dtype=object),
            "bytes": np.asarray([blobs[i] for i in keep], dtype=object),
        }


def decode_and_augment(batch: dict, spec: DecodeSpec, mode: str, rows=None, ledger=None, clock=None) -> dict:
    """Ray Data task: decode a batch of images into views (view slot = the `clock`'s epoch); skip or
    fail on bad files. `rows` first turns the source's rows into {"id"(, "bytes")} (`EpochPositions`,
    `ParquetColumn`); without it the batch holds them already."""
    epoch = current_epoch(clock) if clock is not None else 0
    batch = rows.rows(batch, mode, spec, epoch) if rows is not None else batch
    mixup = spec.mixup
    if mixup.on and mode == "train":  # loose files only (`distill_setup.resolve` refuses the rest)
        if not hasattr(rows, "partners"):
            raise ConfigError(
                "Consistent mixup (data.mixup_alpha) draws its partners from the job's image files; "
                "this task's rows are not such a list, so set data.mixup_alpha to 0 or use a folder source."
            )
        mixup = with_partners(mixup, rows.partners())
    out, bad = decode_views(
        batch,
        spec.size,
        mode,
        seed=spec.seed,
        slot=epoch,
        crop_scale_min=spec.crop_scale_min,
        options=spec.options,
        mixup=mixup,
    )
    return without_bad(out, bad, spec.on_bad_image, ledger)


def decode_recorded_task(batch: dict, spec: DecodeSpec, ledger=None) -> dict:
    """Ray Data task: re-render the recorded views of a batch of soft-label cache rows; skip or fail
    on files that have become unreadable since the cache was built."""
    rows, bad = decode_recorded(batch, spec.size, spec.options)
    return without_bad(rows, bad, spec.on_bad_image, ledger)


def without_bad(rows: dict, bad: list, on_bad_image: str, ledger) -> dict:
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


def _path_rows(source: PathSource, mode: str, spec: DecodeSpec):
    """Loose files: training reads positions (the tasks map them to epoch e's ids), held out the ids."""
    import ray

    paths = source.train_paths if mode == "train" else source.heldout_paths
    blocks = max(1, min(max(4, len(paths) // (4 * spec.batch_size)), len(paths)))
    if mode == "train":
        ds = ray.data.from_items([{"position": i} for i in range(len(paths))], override_num_blocks=blocks)
        return ds, EpochPositions(ray.put(list(paths)))
    return ray.data.from_items([{"id": p} for p in paths], override_num_blocks=blocks), None


def _parquet_rows(source: ParquetSource, mode: str, spec: DecodeSpec):
    """A Parquet table: its image column (the first `limit` rows in training), block order shuffled."""
    import ray

    ds = ray.data.read_parquet(source.parquet, columns=[source.image_column])
    ds = ds.limit(source.limit) if source.limit and mode == "train" else ds
    if mode == "train" and spec.shuffle:
        ds = ds.randomize_block_order()  # a fresh block order every epoch; rows stay in their blocks
    return ds, ParquetColumn(source.image_column, source.image_field, source.heldout_fraction)


def _pack_rows(source: PackSource, mode: str, spec: DecodeSpec):
    """A pack: the chosen ids' bytes from its shards; Parquet's block-order shuffle."""
    ds = pack_source_rows(source, mode)
    return (ds.randomize_block_order() if mode == "train" and spec.shuffle else ds), None


SOURCE_ROWS = {PathSource: _path_rows, ParquetSource: _parquet_rows, PackSource: _pack_rows}


def image_dataset(stream: Stream, mode: str, books: Bookkeeping = Bookkeeping()):
    """One Stage II stream: rows with uint8 views, their view params and the teacher's feature.
    `mode` "train" (the views and order of the clock's epoch) or "heldout" (full views). Without
    `stream.teachers` the stream starts a Ray Data actor pool."""
    spec = stream.decode
    ds, rows = SOURCE_ROWS[type(stream.source)](stream.source, mode, spec)
    ds = ds.map_batches(
        decode_and_augment,
        batch_size=spec.batch_size,
        batch_format="numpy",
        num_cpus=1,
        memory=spec.memory_mb * 1024**2,
        fn_kwargs={
            "spec": spec,
            "mode": mode,
            "rows": rows,
            "ledger": books.ledger,
            "clock": books.clock if mode == "train" else None,
        },
    )
    return add_teacher_features(ds, stream.teacher, stream.pool, stream.gpus, stream.teachers)


def train_feed(ds, with_ids: bool = False, extra: Sequence[str] = ()):
    """Only what the trainer reads (image view + teacher feature, and the `extra` columns: a teacher
    ensemble's; the ids too when the run records them, `train.record_ids`); views stay upstream."""
    return ds.select_columns(TRAIN_COLUMNS + list(extra) + (["id"] if with_ids else []))


def with_run_teachers(stream: Stream, running: contextlib.ExitStack) -> Stream:
    """`stream` with the run's teacher actors (a fixed pool's, started here for the whole run and
    ended with `running`; none for an autoscaled pool)."""
    actors = running.enter_context(teacher_actors(stream.teacher, stream.pool, stream.gpus))
    return replace(stream, teachers=tuple(actors))


def distill_datasets(stream: Stream, books: Bookkeeping, record_ids: bool) -> dict:
    """{"train": the streamed dataset (epochs told by the clock), "heldout": the materialised
    held-out slice (when there is one)}."""
    datasets = {"train": train_feed(image_dataset(stream, "train", books), with_ids=record_ids)}
    if stream.source.has_heldout:
        log.info("teacher features of the held-out slice …")
        datasets["heldout"] = train_feed(image_dataset(stream, "heldout", books)).materialize()
    return datasets
