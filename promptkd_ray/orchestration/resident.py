"""Resident images (`data.in_memory`): data that fits is decoded once, into the Train workers' memory,
and every epoch's seeded views are rendered where they are consumed.

    resident_plan(data, stream, train, books, cache)   driver: the rule of `data.in_memory`, → a
                                                       `ResidentPlan` or None (the run streams)
    ResidentFeed.start(plan, batch, worker)            worker: decodes its share of the images once
    feed.epoch_batches(epoch, audit)                   worker: epoch e's batches {"image",
                                                       "teacher_feature", "id"}, as the stream's

Design decisions:
- The same math as the stream, row for row: epoch e visits the images in `epochs.epoch_order(seed,
  e, n)` and renders each image's view of slot e (`decode.view_rng`); a cached run reads slot
  e mod K in the order a replay reads it (`cache.read_cache_rows`: stored order for e < K, files and
  rows permuted by (seed, e) after). With one worker a resident run trains on the very batches of the
  streaming (or replayed) run with `data.preserve_order` (tested to 1e-4 per step).
- A worker keeps the images whose position p (in the source's list) has p mod world = rank: the shares
  differ by at most one image, and every worker takes the same number of full batches (the smallest
  share's, all-reduced); the images beyond them are recorded as dropped by the id audit, as the
  stream's short last batch is.
- Teacher features: a cached run holds its share of the cache's rows (K slots × d fp16 per image;
  a teacher ensemble's further caches' features beside them, `cache_files.with_members`);
  a streaming run sends each rendered batch to one of the run's fixed teacher actors
  (`teacher_pool.teacher_actors`, round robin from the worker's rank) and keeps `PREFETCH` batches in
  flight; on a GPU worker one background thread renders them, so the student's step waits on neither
  (on a CPU worker they render inline: its one core is the step's, and a thread measured ~10 % slower).
- Mixup (`data.mixup_alpha`): a view's partner is any training image; one this worker does not hold
  is read from its file (the last `PARTNERS_KEPT` kept), so a mixed epoch decodes up to one more
  image per view.
- The rule of `data.in_memory`: "never" streams (the default); "always" requires loose image files and a
  fixed teacher pool (or a cache) and refuses otherwise in one sentence; "auto" is resident when those
  hold and the decoded images are estimated (from the headers of up to 32 files) at most
  `data.in_memory_mb` per worker, else it streams and says why. Packs and Parquet always stream.
- Each worker reads and decodes its own share with `train.cpus_per_worker` threads, from local
  paths or URIs alike (`data.decode.read_image`); unreadable files are counted by the run's ledger
  (or fail the run) as in the stream. No Ray Data plan runs for training at all: a Ray Data pass
  that decoded the images for the workers to collect cost 15–19 s of a 4-epoch run's start here,
  decoding in the worker well under a second. Rank 0 holds the held-out slice the same way: its
  full views, with the teacher's features from the cache or from the actors, once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..data.decode import read_image, render, render_view, row_view, view_rng
from ..data.mixup import draw_view, with_partners
from ..data.sources import PathSource
from ..data.transforms import full_view
from ..errors import ConfigError
from .cache import slot_name
from .cache_files import member_column, read_part_file, with_members
from .epochs import epoch_order
from .pipeline import DecodeSpec, without_bad
from .trainer import all_reduce

log = logging.getLogger(__name__)

PREFETCH = 2  # batches rendered (and sent to the teacher) ahead of the step
HEADER_SAMPLE = 32  # files whose headers estimate the decoded size
PARTNERS_KEPT = 256  # mixup partners another worker holds, kept decoded after a read


@dataclass(frozen=True)
class ResidentPlan:
    """What a worker needs to train from resident images (sent in the `WorkerPlan`)."""

    decode: DecodeSpec  # size, seed, shuffle, crop scale, decode options: the stream's views
    paths: tuple  # the source's training images (position p = paths[p])
    heldout_paths: tuple = ()  # the label-free held-out slice (rank 0 scores it every epoch)
    ledger: object = None  # the run's `BadImageLedger`
    threads: int = 1  # decode threads of a worker (its CPUs)
    cache_root: str = ""  # a cached run: the soft-label cache, else ""
    cache_slots: tuple = ()  # ((slot name, (file names, sorted)), …), one per view slot, then "heldout"
    members: tuple = ()  # a teacher ensemble's further caches (roots), read beside `cache_root`
    actors: tuple = ()  # a streaming run: the run's teacher actors


def resident_plan(data, stream, workers, books, cache=None, members: tuple = ()) -> Optional[ResidentPlan]:
    """The `ResidentPlan` of a run when `data.in_memory` makes it resident, else None (`members`: a
    teacher ensemble's further caches)."""
    if data.in_memory == "never":
        return None
    why_not = _why_not(data, stream, workers.num_workers, cache)
    if why_not:
        if data.in_memory == "always":
            raise ConfigError(f"data.in_memory=always cannot hold this run's images in memory: {why_not}.")
        log.info("data.in_memory=auto: streaming, since %s", why_not)
        return None
    slots = ()
    if cache is not None:
        names = [slot_name(s) for s in range(cache.views)] + ["heldout"] * (
            "heldout" in cache.manifest["parts"]
        )
        slots = tuple((n, tuple(sorted(cache.manifest["parts"][n]["files"]))) for n in names)
    log.info("resident images: decoded once into the Train workers' memory, views rendered there")
    return ResidentPlan(
        decode=stream.decode,
        paths=tuple(stream.source.train_paths),
        heldout_paths=tuple(stream.source.heldout_paths),
        ledger=books.ledger,
        threads=max(1, int(workers.cpus_per_worker)),
        cache_root=cache.storage.root if cache is not None else "",
        cache_slots=slots,
        members=members,
        actors=tuple(stream.teachers),
    )


def _why_not(data, stream, workers: int, cache) -> str:
    """Why the run's images cannot be resident ("" when they can)."""
    source = stream.source
    if not isinstance(source, PathSource):
        return "its images are not loose files (packs and Parquet stream)"
    if cache is None and not stream.teachers:
        return "its teacher pool autoscales (teacher_pool.max_size > 0); a fixed pool is needed"
    estimate = decoded_mb(source.train_paths) / max(workers, 1)
    if estimate > data.in_memory_mb:
        return f"its decoded images need about {estimate:,.0f} MB per worker, over data.in_memory_mb={data.in_memory_mb}"
    return ""


def decoded_mb(paths) -> float:
    """The decoded size (RGB, MB) of `paths`, estimated from the headers of up to `HEADER_SAMPLE` files."""
    import io

    from PIL import Image

    from .. import storage

    if not paths:
        return 0.0
    step = max(1, len(paths) // HEADER_SAMPLE)
    sizes = []
    for path in list(paths)[::step][:HEADER_SAMPLE]:
        try:
            with Image.open(io.BytesIO(storage.read_bytes(path))) as img:
                sizes.append(img.size[0] * img.size[1] * 3)
        except Exception:  # an unreadable file: the decode pass counts it
            continue
    return (float(np.mean(sizes)) if sizes else 0.0) * len(paths) / 2**20


def decode_share(plan: ResidentPlan, rank: int, world: int) -> dict:
    """This worker's images (positions p with p mod world = rank), decoded once: position → (id,
    RGB image). Unreadable files are skipped and counted by the ledger, or raise, as the stream's."""
    return _decoded(plan, plan.paths, range(rank, len(plan.paths), world))


def _decoded(plan: ResidentPlan, paths: tuple, positions) -> dict:
    spec = plan.decode

    def decode(p: int):
        try:
            return p, read_image(paths[p], spec.options), None
        except Exception as exc:  # any unreadable file, as decode.decode_views
            return p, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(plan.threads) as pool:
        done = list(pool.map(decode, positions))
    without_bad(
        {}, [(paths[p], why) for p, _, why in done if why is not None], spec.on_bad_image, plan.ledger
    )
    return {p: (paths[p], image) for p, image, why in done if why is None}


# --- worker ------------------------------------------------------------------------------------------


class ResidentFeed:
    """One worker's resident images and their epochs' batches."""

    def __init__(self, plan: ResidentPlan, images: dict, batch: int, rank: int, background: bool = False):
        self.plan, self.images = plan, images  # images: position → (id, PIL image)
        self.batch, self.rank = batch, rank
        self.background = background  # render in a thread (a GPU step leaves the CPU free), else inline
        self.by_id = {ident: p for p, (ident, _) in images.items()}
        self.rows = _cache_rows(plan, set(self.by_id)) if plan.cache_root else None  # per view slot
        self.mixup = with_partners(plan.decode.mixup, plan.paths)
        self.partner = ResidentPartners(self.images, self.by_id, plan.decode.options)
        self.steps = int(all_reduce(_tensor(len(images) // batch), "min"))

    @classmethod
    def start(cls, plan: ResidentPlan, batch: int, worker) -> "ResidentFeed":
        """Decode this worker's share (`trainer.Worker`: rank, world, device); on a GPU worker the
        views render in a background thread."""
        images = decode_share(plan, worker.rank, worker.world)
        log.info("rank %d holds %d decoded images", worker.rank, len(images))
        return cls(plan, images, batch, worker.rank, background=worker.device.type == "cuda")

    def heldout_batches(self, size: int = 64) -> list:
        """The held-out slice's full views with the teacher's features, once (rank 0 scores them
        every epoch): from the cache's held-out rows, or from the run's teacher actors."""
        import ray
        import torch

        images = _decoded(self.plan, self.plan.heldout_paths, range(len(self.plan.heldout_paths)))
        stored = {}
        for part, files in (s for s in self.plan.cache_slots if s[0] == "heldout"):
            for name in files:
                rows = read_part_file(self.plan.cache_root, f"{part}/{name}")
                stored.update(zip((str(i) for i in rows["id"]), rows["teacher_feature"]))
        kept = [(i, im) for _, (i, im) in sorted(images.items()) if not self.plan.cache_root or i in stored]
        views = [render_view(im, full_view(*im.size), self.plan.decode.size) for _, im in kept]
        batches = []
        for k in range(0, len(views), size):
            pixels = np.stack(views[k : k + size])
            if self.plan.cache_root:
                feature = np.stack([stored[i] for i, _ in kept[k : k + size]])
            else:
                feature = ray.get(
                    self.plan.actors[(k // size) % len(self.plan.actors)].features.remote(pixels)
                )
            batches.append({"image": torch.from_numpy(pixels), "teacher_feature": torch.tensor(feature)})
        return batches

    def epoch_rows(self, epoch: int) -> list:
        """Epoch e's rows of this worker, in order: (position, view, feature or None)."""
        d = self.plan.decode
        if self.rows is None:
            order = epoch_order(d.seed, epoch, len(self.plan.paths), d.shuffle)
            return [(int(p), None, None) for p in order if int(p) in self.images]
        return [(self.by_id[i], v, f) for i, v, f in _replay_order(self.rows, self.plan, epoch)]

    def epoch_batches(self, epoch: int, audit=None):
        """This worker's `steps` full batches of `epoch` (the rest recorded as dropped by `audit`)."""
        rows = self.epoch_rows(epoch)
        chunks = [rows[s * self.batch : (s + 1) * self.batch] for s in range(self.steps)]
        if audit is not None:
            audit.dropped.extend(self.images[p][0] for p, _, _ in rows[self.steps * self.batch :])
        with ThreadPoolExecutor(1) if self.background else _Inline() as render:
            pending = deque()
            for s in range(len(chunks) + PREFETCH):
                if s < len(chunks):
                    pending.append(render.submit(self._make, chunks[s], epoch, s))
                if s >= PREFETCH:
                    batch = _ready(pending.popleft().result())
                    if audit is not None:
                        audit.trained.extend(batch["id"])
                    yield batch

    def _make(self, chunk: list, epoch: int, step: int) -> dict:
        """A batch's views (and its teacher call, in flight, in a streaming run)."""
        import torch

        d, ids, views, features = self.plan.decode, [], [], []
        for p, view, feature in chunk:
            ident, image = self.images[p]
            if view is None:
                rng = view_rng(d.seed, ident, epoch)
                view = draw_view(image, ident, rng, d.crop_scale_min, self.mixup, self.partner)
            views.append(render(image, view, d.size, self.partner))
            ids.append(ident)
            features.append(feature)
        pixels = np.stack(views)
        if self.rows is not None:  # per row, the features of the job's teacher and of each member
            columns = ["teacher_feature"] + [member_column(i) for i in range(1, len(self.plan.members) + 1)]
            stored = {c: torch.from_numpy(np.stack([f[k] for f in features])) for k, c in enumerate(columns)}
            return {"image": torch.from_numpy(pixels), **stored, "id": ids}
        actors = self.plan.actors
        feature = actors[(step + self.rank) % len(actors)].features.remote(pixels)
        return {"image": torch.from_numpy(pixels), "teacher_feature": feature, "id": ids}


class ResidentPartners:
    """Mixup partners by id: a resident image when this worker holds it, else read from its file
    (the last `PARTNERS_KEPT` kept)."""

    def __init__(self, images: dict, by_id: dict, options):
        self.images, self.by_id, self.options = images, by_id, options
        self.read: OrderedDict = OrderedDict()

    def __call__(self, ident: str):
        if ident in self.by_id:
            return self.images[self.by_id[ident]][1]
        if ident not in self.read:
            self.read[ident] = read_image(ident, self.options)
            while len(self.read) > PARTNERS_KEPT:
                self.read.popitem(last=False)
        return self.read[ident]


class _Inline:
    """An executor that runs each call as it is submitted (a CPU worker has no core to spare)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args) -> Future:
        done = Future()
        done.set_result(fn(*args))
        return done


def _ready(batch: dict) -> dict:
    """The batch with its teacher features fetched (a streaming run's actor call)."""
    import torch

    feature = batch["teacher_feature"]
    if not isinstance(feature, torch.Tensor):
        import ray

        batch["teacher_feature"] = torch.tensor(ray.get(feature))  # a copy: the object store's is read-only
    return batch


def _tensor(value: int):
    import torch

    return torch.tensor([value], dtype=torch.int64)


def _cache_rows(plan: ResidentPlan, ids: set) -> list:
    """Per slot, per file: this worker's rows (id, View, (fp16 feature, each ensemble member's)), with
    each row's index in its file (a replay permutes rows within a file)."""
    columns = ["teacher_feature"] + [member_column(i) for i in range(1, len(plan.members) + 1)]
    slots = []
    for part, files in (s for s in plan.cache_slots if s[0] != "heldout"):
        per_file = []
        for name in files:
            rows = with_members(
                read_part_file(plan.cache_root, f"{part}/{name}"), plan.members, f"{part}/{name}"
            )
            per_file.append(
                (
                    len(rows["id"]),
                    {
                        j: (
                            str(i),
                            row_view({c: rows[c][j] for c in rows}),
                            tuple(rows[c][j] for c in columns),
                        )
                        for j, i in enumerate(rows["id"])
                        if str(i) in ids
                    },
                )
            )
        slots.append(per_file)
    return slots


def _replay_order(slots: list, plan: ResidentPlan, epoch: int):
    """The rows of slot e mod K in a replay's order (`cache.read_cache_rows`), this worker's only."""
    d = plan.decode
    files = slots[epoch % len(slots)]
    reorder = d.shuffle and epoch >= len(slots)
    for j in epoch_order(d.seed, epoch, len(files), reorder):
        j = int(j)
        count, mine = files[j]
        order = np.random.default_rng([d.seed, epoch, j]).permutation(count) if reorder else range(count)
        for k in order:
            if int(k) in mine:
                yield mine[int(k)]
