"""The soft-label cache: the teacher's features of K seeded views per image, computed once and
replayed by Stage II — a cached run is the streaming run, replayed, at the student's cost alone.

    write_cache(stream, out, views, …)   decode → teacher pool once per view slot → Parquet per slot
    open_cache(path, stream)             the job's `teacher.cache`, checked against the job's stream
    replay_datasets(cache, decode, …)    {"train": slot e mod K re-rendered in epoch e, "heldout": …}

Layout of a cache (a local folder or a URI, through `promptkd_ray.storage`):

    slot_0000/part-00000.parquet …  slot_0000.json   rows: id, view_top/left/height/width/flip,
    …                                                (mixup on: mix_partner, mix_lambda, mix_top/…/flip),
                                                     teacher_feature (fixed_size_list<float16>[d]), in
                                                     the streaming order of epoch 0; the JSON, written
                                                     after its files, lists them with their sha256
    heldout/part-….parquet          heldout.json     the held-out slice's full views
    manifest.json                           written last: what made the cache, K, rows, sha256 per file,
                                            and the teacher to rebuild (`teacher_ref`, outside the key)

Design decisions:
- A row holds a view, not pixels: replay re-renders the recorded crop box and flip from the source
  image (`decode.decode_recorded`), so the student sees the very pixels the teacher saw, and a
  cached view costs ≈ 2 bytes × d + 40 bytes. Slot s holds exactly the views a streaming run draws
  in epoch s (`decode.view_rng`), in that epoch's order (`epochs.epoch_order`; the build preserves
  it), so epoch e < K of a cached run reads the streaming epoch e, row for row: with one worker and
  `data.preserve_order` the two runs train on the same batches. Epochs e ≥ K reread slot e mod K
  with its files and each file's rows permuted by (seed, e).
- The driver writes the files (`ROWS_PER_FILE` rows each, sha256 taken as they are written): plain
  Parquet any reader opens, names that say their order.
- Only what the teacher's features depend on is in the cache's key: the teacher (spec, or
  artifact, with the sha256 of its weights), image size, crop setting, seed, the image list and,
  when on, the mixup setting (a mixed view's partner, its box and λ are stored beside the view).
  Temperature, loss, student, projector and prompt depth are not: one cache serves them all.
- `teacher.cache_views: k` replays only the first k slots (epoch e reads slot e mod k): the job's
  cache is opened whole, then cut (`Cache.first`) to a cache whose manifest says K = k, so the
  replay, resident workers and the run's log read k slots without a rule of their own.
- A teacher ensemble (`teacher.ensemble`, `orchestration/ensemble.py`) zips further caches of the
  same views file by file: `read_cache_rows(…, members)` adds their features as `teacher_feature_i`.
- A build writes each slot's files, then the slot's JSON, and the manifest last: an interrupted
  build resumes at the first slot without a JSON (its partial files are removed first), and a
  folder without a manifest is never taken for a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Optional

from ..core.artifacts import ModelRef
from ..data.mixup import MIX_COLUMNS
from ..data.sources import ImageSource, PathSource
from ..errors import ConfigError
from ..storage import Storage
from .bookkeeping import Bookkeeping
from .cache_files import CACHE_COLUMNS, member_column, parquet_bytes, read_part_file, with_members
from .epochs import current_epoch, epoch_order, set_epoch
from .pipeline import DecodeSpec, Stream, decode_recorded_task, image_dataset, train_feed

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
ROWS_PER_FILE = 1024
KEY_WORDS = (  # the cache key's fields, in words, in the order a difference is told
    ("teacher", "teacher"),
    ("image_size", "image size"),
    ("crop_scale_min", "crop setting"),
    ("seed", "seed"),
    ("images_sha256", "image list"),
    ("train_images", "image list"),
    ("heldout_images", "held-out slice"),
    ("exif_orientation", "EXIF orientation rule"),
    ("mixup", "mixup setting"),
)


def slot_name(slot: int) -> str:
    return f"slot_{slot:04d}"


@dataclass(frozen=True)
class Cache:
    """An opened, whole cache: where it is and what its manifest says."""

    storage: Storage
    manifest: dict

    @property
    def views(self) -> int:
        return int(self.manifest["views"])

    def first(self, k: int, setting: str = "teacher.cache_views") -> "Cache":
        """This cache cut to its first `k` view slots (and its held-out slice), a cache of K = k that
        every reader replays as it is (`k` 0: the whole cache); more than it holds is one sentence."""
        if not k or k == self.views:
            return self
        if k > self.views:
            raise ConfigError(
                f"{setting} is {k}, but the soft-label cache {self.storage.root} holds {self.views} "
                f"views per image; set it to at most {self.views} (0 = all of them)."
            )
        kept = {slot_name(s) for s in range(k)} | {"heldout"}
        parts = {part: info for part, info in self.manifest["parts"].items() if part in kept}
        return Cache(self.storage, {**self.manifest, "views": k, "parts": parts})


def cache_key(stream: Stream) -> dict:
    """What the teacher's features depend on; a cache made with another key is refused."""
    source, decode = stream.source, stream.decode
    ids = "\n".join(source.train_paths) + "\n--heldout--\n" + "\n".join(source.heldout_paths)
    return {
        "teacher": teacher_identity(stream.teacher),
        "image_size": decode.size,
        "crop_scale_min": decode.crop_scale_min,
        "seed": decode.seed,
        "images_sha256": hashlib.sha256(ids.encode("utf-8")).hexdigest(),
        "train_images": len(source.train_paths),
        "heldout_images": len(source.heldout_paths),
        **({"exif_orientation": "apply"} if decode.options.exif_orientation == "apply" else {}),
        **decode.mixup.key(),
    }


def teacher_identity(teacher: ModelRef) -> dict:
    """The teacher as the cache key sees it: its kind, spec and the sha256 of its weights file
    (the artifact's, or a spec's local weights; none for a pretrained tag)."""
    from .. import storage
    from ..core.models.loading import ModelSpec, _looks_like_path

    if teacher.kind == "teacher":
        weights = (
            teacher.source if teacher.source.endswith(".safetensors") else teacher.source + ".safetensors"
        )
    else:
        pretrained = ModelSpec.parse(teacher.source).pretrained
        weights = pretrained if pretrained and _looks_like_path(pretrained) else ""
    digest = hashlib.sha256(storage.read_bytes(weights)).hexdigest() if weights else None
    return {"kind": teacher.kind, "spec": teacher.spec, "weights_sha256": digest}


def check_source(source: ImageSource) -> None:
    """The cache replays views from loose image files: other sources are refused in one sentence."""
    if not isinstance(source, PathSource):
        raise ConfigError(
            "The soft-label cache replays views from image files; data.source: parquet or packed is "
            "not supported by `promptkd-ray cache` and teacher.cache yet."
        )


# --- build ---------------------------------------------------------------------------------------------


def write_cache(stream: Stream, out: str, views: int, books: Bookkeeping, progress=None) -> Cache:
    """Run the teacher pool once per view slot (and once over the held-out slice) and write the
    cache at `out`; slots already written by an interrupted build are kept. → the opened cache.
    `progress`, if given, has `.rows(n)` (n more views written) and `.part(name, rows, done, total)`."""
    check_source(stream.source)
    store, key = Storage(out), cache_key(stream)
    if store.is_file(MANIFEST):
        cache = _opened(store, f"The cache at {store.root}")
        _check_key(cache, key, views, f"The cache at {store.root} already exists and was made")
        log.info("the cache at %s is already whole (%d views): nothing to do", store.root, cache.views)
        return cache
    _check_partial(store, key, views)
    store.write_text("build.json", json.dumps({"key": key, "views": views}, indent=1) + "\n")
    parts = {}
    todo = [(slot_name(s), s) for s in range(views)] + [("heldout", None)] * stream.source.has_heldout
    for i, (part, slot) in enumerate(todo):
        parts[part] = _write_part(stream, books, store, part, slot, progress)
        if progress is not None:
            progress.part(part, parts[part]["rows"], i + 1, len(todo))
    manifest = {
        "format": FORMAT,
        "key": key,
        "teacher_ref": {"kind": stream.teacher.kind, "source": stream.teacher.source},
        "views": views,
        "parts": parts,
        "rows": sum(p["rows"] for p in parts.values()),
        "bytes": sum(n for p in parts.values() for n in p["sizes"].values()),
    }
    store.write_text(MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return Cache(store, manifest)


def _check_partial(store: Storage, key: dict, views: int) -> None:
    """An interrupted build of another job (or another K) is not continued."""
    if not store.is_file("build.json"):
        return
    began = json.loads(store.read_text("build.json"))
    if began["key"] != key or began["views"] != views:
        difference = _difference(began["key"], key) or f"{began['views']} views, not {views}"
        raise ConfigError(
            f"The folder {store.root} holds an interrupted cache build of another job "
            f"({difference}); choose another folder or delete it."
        )


def _write_part(
    stream: Stream, books: Bookkeeping, store: Storage, name: str, slot: Optional[int], progress
) -> dict:
    """One view slot (or, `slot` None, the held-out slice) as part `name` of the cache: Parquet files
    in stream order, then `name.json` listing them. A part whose JSON exists was finished by an
    earlier attempt and is reused."""
    if store.is_file(f"{name}.json"):
        log.info("%s: written by an earlier attempt, reused", name)
        info = json.loads(store.read_text(f"{name}.json"))
        if progress is not None:
            progress.rows(info["rows"], reused=True)
        return info
    store.delete(name)  # partial files of an interrupted attempt
    if slot is not None:
        set_epoch(books.clock, slot)
    ds = image_dataset(stream, "heldout" if slot is None else "train", books)
    ds.context.execution_options.preserve_order = True  # the stream's order (this dataset's context only)
    info: dict = {"files": {}, "sizes": {}, "rows": 0}
    columns = CACHE_COLUMNS + list(MIX_COLUMNS) * (slot is not None and stream.decode.mixup.on)
    batches = ds.select_columns(columns).iter_batches(batch_size=ROWS_PER_FILE, batch_format="numpy")
    for j, batch in enumerate(batches):
        file, data = f"part-{j:05d}.parquet", parquet_bytes(batch)
        store.write_bytes(f"{name}/{file}", data)
        info["files"][file], info["sizes"][file] = hashlib.sha256(data).hexdigest(), len(data)
        info["rows"] += len(batch["id"])
        if progress is not None:
            progress.rows(len(batch["id"]))
    store.write_text(f"{name}.json", json.dumps(info, indent=1) + "\n")
    return info


# --- open and check --------------------------------------------------------------------------------------


def open_cache(path: str, stream: Stream) -> Cache:
    """The cache at `path`, whole, untampered and made for this job's stream; else one sentence."""
    check_source(stream.source)
    cache = read_manifest(path)
    _check_key(cache, cache_key(stream), None, f"teacher.cache {cache.storage.root} was made")
    check_files(cache)
    return cache


def read_manifest(path: str, setting: str = "teacher.cache") -> Cache:
    """The cache at `path` (named by the job's `setting`) with its manifest read; its files unchecked."""
    store = Storage(path)
    if not store.is_file(MANIFEST):
        what = (
            "an unfinished cache build (no manifest.json yet; run `promptkd-ray cache` again to finish it)"
            if store.is_file("build.json")
            else "no soft-label cache (no manifest.json)"
        )
        raise ConfigError(f"{setting} {store.root} holds {what}.")
    return _opened(store, f"{setting} {store.root}")


def _opened(store: Storage, where: str) -> Cache:
    try:
        manifest = json.loads(store.read_text(MANIFEST))
        whole = manifest["format"] == FORMAT and int(manifest["views"]) >= 1 and bool(manifest["parts"])
    except (ValueError, KeyError, TypeError):
        whole = False
    if not whole:
        raise ConfigError(f"{where} has an unreadable manifest.json; rebuild the cache.")
    return Cache(store, manifest)


def _check_key(cache: Cache, key: dict, views: Optional[int], what: str) -> None:
    difference = _difference(cache.manifest["key"], key)
    if difference:
        raise ConfigError(f"{what} with another {difference}; build a cache for this job.")
    if views is not None and views != cache.views:
        raise ConfigError(
            f"{what} with {cache.views} views, not {views}; choose another folder for K = {views}."
        )


def _difference(made: dict, wanted: dict) -> str:
    """The first field where a cache's key differs from the job's, in words ("" when none)."""
    for field, words in KEY_WORDS:
        if made.get(field) != wanted.get(field):
            return f"{words} ({short_value(made.get(field))} in the cache, {short_value(wanted.get(field))} in the job)"
    return ""


def short_value(value) -> str:
    if isinstance(value, dict):
        return f"{value.get('spec')}, weights {str(value.get('weights_sha256'))[:12]}"
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


def check_files(cache: Cache, setting: str = "teacher.cache") -> None:
    """Every file the manifest lists is there, with its sha256 (`setting`: the job's key naming it)."""
    for part, info in cache.manifest["parts"].items():
        for name, digest in info["files"].items():
            rel = f"{part}/{name}"
            if not cache.storage.is_file(rel):
                raise ConfigError(f"{setting} {cache.storage.root} is missing {rel}; rebuild the cache.")
            if hashlib.sha256(cache.storage.read_bytes(rel)).hexdigest() != digest:
                raise ConfigError(
                    f"{setting} {cache.storage.root}: {rel} does not match the sha256 its "
                    "manifest records (changed after the build); rebuild the cache."
                )


# --- replay ------------------------------------------------------------------------------------------------


def read_cache_rows(
    batch: dict, root: str, slots: list, seed: int, clock=None, shuffle: bool = True, members: tuple = ()
) -> dict:
    """Ray Data task: input row j → the rows of file j of the slot of the `clock`'s epoch e (slot
    e mod K; `slots`: each slot's file names), with the ensemble `members`' features of the same
    file. Epochs e < K keep the stored (streaming) order; later ones permute the files and each
    file's rows by (seed, e)."""
    import numpy as np

    epoch = current_epoch(clock) if clock is not None else 0
    part, files = slots[epoch % len(slots)]
    reorder = shuffle and epoch >= len(slots)
    file_order = epoch_order(seed, epoch, len(files), reorder)
    out = []
    for j in (int(file_order[int(j)]) for j in batch["file"]):
        rows = with_members(read_part_file(root, f"{part}/{files[j]}"), members, f"{part}/{files[j]}")
        if reorder:
            order = np.random.default_rng([seed, epoch, j]).permutation(len(rows["id"]))
            rows = {k: v[order] for k, v in rows.items()}
        out.append(rows)
    return {k: np.concatenate([r[k] for r in out]) for k in out[0]}


def replay_dataset(cache: Cache, parts: list, decode: DecodeSpec, books: Bookkeeping, members: tuple = ()):
    """The cached rows of `parts` (the view slots, or ["heldout"]) re-rendered from their source
    images: uint8 `image` + the stored `teacher_feature` (+ the ensemble `members`' columns, cache
    roots); the slot is the clock's epoch mod K."""
    import ray

    slots = [(part, sorted(cache.manifest["parts"][part]["files"])) for part in parts]
    files = len(slots[0][1])
    if any(len(f) != files for _, f in slots):  # every slot holds the same images, so as many files
        raise ConfigError(
            f"teacher.cache {cache.storage.root}: its view slots hold different numbers of files; "
            "rebuild the cache."
        )
    ds = ray.data.from_items([{"file": j} for j in range(files)], override_num_blocks=files)
    ds = ds.map_batches(
        read_cache_rows,
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.5,
        fn_kwargs={
            "root": cache.storage.root,
            "slots": slots,
            "seed": decode.seed,
            "clock": books.clock,
            "shuffle": decode.shuffle,
            "members": members,
        },
    )
    return ds.map_batches(
        decode_recorded_task,
        batch_size=decode.batch_size,
        batch_format="numpy",
        num_cpus=1,
        memory=decode.memory_mb * 1024**2,
        fn_kwargs={"spec": decode, "ledger": books.ledger},
    )


def replay_datasets(
    cache: Cache, decode: DecodeSpec, books: Bookkeeping, record_ids: bool, members: tuple = ()
) -> dict:
    """{"train": slot e mod K in epoch e (told by the clock), with the ensemble `members`' features
    (cache roots; `member_column`); "heldout": the cached held-out slice (the job's teacher only)}."""
    slots = [slot_name(s) for s in range(cache.views)]
    train = replay_dataset(cache, slots, decode, books, members)
    extra = [member_column(i) for i in range(1, len(members) + 1)]
    datasets = {"train": train_feed(train, with_ids=record_ids, extra=extra)}
    if "heldout" in cache.manifest["parts"]:
        heldout = replay_dataset(cache, ["heldout"], decode, Bookkeeping(books.ledger))
        datasets["heldout"] = train_feed(heldout).materialize()
    return datasets
