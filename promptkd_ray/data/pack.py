"""Packs: a dataset's images as Parquet shards of encoded bytes with a manifest (`promptkd-ray pack`).

    PACK/train/part-00000.parquet …    id (the image's path relative to the source's base folder),
    PACK/val/…  PACK/test/…            image (encoded bytes), label (int32), classname
    PACK/manifest.json                 source, classes, per split: images and shards (rows, bytes,
                                       sha256), re-encode setting — written last

    write_pack(splits, out, …)        a `DatasetSplits` (benchmark, split JSON, ImageFolder, toy
                                      world) → shards + manifest; resumes an interrupted pack
    open_pack(root)                   the manifest, read and checked (`Pack`)
    Pack.splits()                     the pack as a `PackedSplits`: items named by their pack ids

Design decisions:
- Millions of small files are slow on object storage (one request each); a few hundred shards of
  ~256 MB stream at the store's bandwidth. A shard closes when it reaches `shard_mb` (or
  `shard_images`); row groups of `ROW_GROUP` images let readers stream inside a shard.
- An image's id is its path relative to the base folder common to every listed file, so ids are
  stable across machines and mounts, name the same file as the loose source (the base is in the
  manifest), and the held-out slice, `data.limit` and the bad-image ledger work on them as on
  paths. Rows keep the source's order within each split, so a job seeded s holds out the same
  images from the pack as from the loose files.
- Bytes are copied as they are: the authors crop from the originals. `max_short_side` re-encodes
  larger images (JPEG, quality `JPEG_QUALITY`) — off by default. The pack does not judge images:
  an unreadable file is stored as read (a vanished one as empty bytes) so Stage II's ledger and
  `eval` report it exactly as they would from the loose files; the manifest counts them.
- The manifest is written last, atomically: a pack without one is partial and never read. A
  re-run with the same source and settings resumes after the last complete shard of each split
  (shards are written atomically, their boundaries are deterministic); other settings, or an
  existing complete pack, are refused in one sentence (`overwrite` starts over).
- Files are read by a thread pool (I/O bound; PIL's re-encode releases the GIL); memory stays at
  about one shard plus `workers` × 4 images in flight.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from .. import storage
from ..errors import DatasetLayoutError, StorageError, UsageError
from ..storage import Storage, is_uri, join
from .layout import DatasetSplits, Item

log = logging.getLogger(__name__)

PACK_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "pack_plan.json"  # the settings of a pack in progress, checked when it is resumed
SPLITS = ("train", "val", "test")
DEFAULT_SHARD_MB = 256
ROW_GROUP = 256  # images per Parquet row group
JPEG_QUALITY = 95  # re-encode quality (`max_short_side`)
COLUMNS = ("id", "image", "label", "classname")


@dataclass(frozen=True)
class PackedSplits(DatasetSplits):
    """A pack's splits: item paths are pack ids; the bytes live in the shards under `pack`."""

    pack: str = ""  # the pack folder or URI


@dataclass(frozen=True)
class Pack:
    root: str  # pack folder or URI
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def classnames(self) -> tuple[str, ...]:
        return tuple(self.manifest["classnames"])

    def row_groups(self, split: str) -> list[tuple[str, int]]:
        """(shard path or URI, row group index) of every row group of `split`, in order."""
        size = self.manifest["row_group_rows"]
        shards = self.manifest["splits"].get(split, {}).get("shards", [])
        return [(Storage(self.root).path(s["path"]), g) for s in shards for g in range(-(-s["rows"] // size))]

    def shard_paths(self, split: str) -> list[str]:
        """Paths or URIs of `split`'s shards, in order (none when the pack lacks the split)."""
        shards = self.manifest["splits"].get(split, {}).get("shards", [])
        return [Storage(self.root).path(s["path"]) for s in shards]

    def splits(self) -> PackedSplits:
        """Ids and labels of every split, read from the shards' id and label columns (no image)."""
        import pyarrow.parquet as pq

        parts = {}
        for split in SPLITS:
            items: list[Item] = []
            for path in self.shard_paths(split):
                table = pq.read_table(path, columns=["id", "label"])
                items += [
                    Item(i, int(label))
                    for i, label in zip(table.column("id").to_pylist(), table.column("label").to_pylist())
                ]
            parts[split] = tuple(items)
        return PackedSplits(
            self.name, self.classnames, parts["train"], parts["test"], parts["val"], pack=self.root
        )


def open_pack(root: str) -> Pack:
    """The pack at `root` (folder or URI); one sentence when it is not a complete pack."""
    store = Storage(root)
    if not store.is_file(MANIFEST):
        state = (
            "a partial pack (its manifest is written last; re-run `promptkd-ray pack` to finish it)"
            if store.is_file(PLAN)
            else "no pack manifest"
        )
        raise DatasetLayoutError(
            f"Expected a pack written by `promptkd-ray pack` at {store.root}, found {state}."
        )
    try:
        manifest = json.loads(store.read_text(MANIFEST))
    except (json.JSONDecodeError, StorageError) as exc:
        raise DatasetLayoutError(
            f"Expected JSON in the pack manifest {store.path(MANIFEST)}, found ({exc})."
        ) from None
    if manifest.get("format") != "promptkd_ray.pack" or manifest.get("version") != PACK_VERSION:
        raise DatasetLayoutError(
            f"Expected a version-{PACK_VERSION} pack manifest at {store.path(MANIFEST)}, found "
            f"format {manifest.get('format')!r} version {manifest.get('version')!r}."
        )
    return Pack(store.root, manifest)


def is_pack(root: str) -> bool:
    """`root` holds a pack manifest (complete pack)."""
    return Storage(root).is_file(MANIFEST)


# --- writing ---------------------------------------------------------------------------------------


def base_folder(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (local or URI), without a trailing '/'."""
    if not paths:
        return ""
    if all(not is_uri(p) for p in paths):
        return os.path.commonpath([os.path.dirname(p) for p in paths])
    dirs = [p.rsplit("/", 1)[0] for p in paths]
    common = os.path.commonprefix(dirs)
    if any(d != common and not d.startswith(common + "/") for d in dirs):
        common = common.rsplit("/", 1)[0]
    return common.rstrip("/")


def relative_id(path: str, base: str) -> str:
    """`path` relative to `base`, '/'-separated."""
    rel = os.path.relpath(path, base) if not is_uri(path) else path[len(base) :].lstrip("/")
    return rel.replace(os.sep, "/")


def encode_image(data: bytes, max_short_side: int) -> tuple[bytes, bool]:
    """(bytes, ok): `data` itself, or re-encoded as JPEG when its short side exceeds `max_short_side`
    (0: never); ok is False when `data` is not a readable image (kept as it is)."""
    if not max_short_side:
        return data, True
    from PIL import Image

    from .decode import read_image

    try:
        img = read_image(data)  # the one decoder: pixel limit, 16-bit scaling, RGB as training sees it
    except Exception:  # any unreadable image: stored as read, judged downstream like the loose file
        return data, False
    if min(img.size) <= max_short_side:
        return data, True
    scale = max_short_side / min(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    out = io.BytesIO()
    img.resize(size, Image.BICUBIC).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), True


def _read_one(path: str, max_short_side: int) -> tuple[bytes, bool]:
    try:
        data = storage.read_bytes(path)
    except (StorageError, OSError):
        return b"", False
    return encode_image(data, max_short_side)


def _shard_bytes(rows: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(rows["id"], pa.string()),
            "image": pa.array(rows["image"], pa.binary()),
            "label": pa.array(rows["label"], pa.int32()),
            "classname": pa.array(rows["classname"], pa.string()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(
        table, sink, row_group_size=ROW_GROUP, compression="none"
    )  # JPEG/PNG bytes do not compress
    return sink.getvalue()


def _images(items: Sequence[Item], max_short_side: int, workers: int) -> Iterator[tuple[Item, bytes, bool]]:
    """(item, bytes, readable) in order, read by `workers` threads, at most 4 × workers ahead."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list = []
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(_read_one, item.path, max_short_side)))
            if len(pending) >= 4 * workers:
                head, future = pending.pop(0)
                yield (head, *future.result())
        for head, future in pending:
            yield (head, *future.result())


@dataclass
class _Settings:
    shard_mb: float = DEFAULT_SHARD_MB
    shard_images: int = 0  # 0 = no limit
    max_short_side: int = 0
    workers: int = 16

    def full(self, rows: int, size: int) -> bool:
        return size >= self.shard_mb * 1e6 or (self.shard_images and rows >= self.shard_images)


def write_pack(
    splits: DatasetSplits,
    out: str,
    source: dict,
    which: Iterable[str] = SPLITS,
    shard_mb: float = DEFAULT_SHARD_MB,
    shard_images: int = 0,
    max_short_side: int = 0,
    workers: int = 16,
    overwrite: bool = False,
    progress: bool = True,
) -> Pack:
    """Pack the `which` splits of `splits` into `out` (see the module docstring); `source` describes
    where they came from (kept in the manifest). Resumes an interrupted pack with the same settings."""
    store = Storage(out)
    which = [s for s in which if getattr(splits, s)]
    if not which:
        raise UsageError(f"{splits.name} has no images in the splits to pack.")
    base = base_folder([it.path for s in which for it in getattr(splits, s)])
    settings = _Settings(shard_mb, shard_images, max_short_side, workers)
    plan = {
        "source": source,
        "name": splits.name,
        "base": base,
        "splits": {s: len(getattr(splits, s)) for s in which},
        "shard_mb": shard_mb,
        "shard_images": shard_images,
        "max_short_side": max_short_side,
    }
    _start(store, plan, overwrite)
    entries, unreadable = {}, {}
    bar = _bar(sum(plan["splits"].values()), progress)
    for split in which:
        entries[split], unreadable[split] = _pack_split(
            store, split, getattr(splits, split), splits.classnames, base, settings, bar
        )
    bar.close()
    manifest = {
        "format": "promptkd_ray.pack",
        "version": PACK_VERSION,
        "name": splits.name,
        "source": source,
        "base": base,
        "classnames": list(splits.classnames),
        "reencode": {"max_short_side": max_short_side, "format": "JPEG", "quality": JPEG_QUALITY}
        if max_short_side
        else None,
        "columns": list(COLUMNS),
        "row_group_rows": ROW_GROUP,
        "splits": {
            s: {"images": plan["splits"][s], "unreadable_at_pack": unreadable[s], "shards": entries[s]}
            for s in which
        },
    }
    store.write_text(MANIFEST, json.dumps(manifest, indent=1))
    store.delete(PLAN)
    return Pack(store.root, manifest)


def _start(store: Storage, plan: dict, overwrite: bool) -> None:
    """Refuse to overwrite a pack silently; resume one in progress with the same plan."""
    if overwrite:
        for name in (MANIFEST, PLAN, *SPLITS):
            store.delete(name)
    if store.is_file(MANIFEST):
        raise UsageError(f"{store.root} already holds a complete pack; pass --overwrite to pack again.")
    if store.is_file(PLAN):
        previous = json.loads(store.read_text(PLAN))
        if previous != json.loads(json.dumps(plan)):
            changed = sorted(k for k in plan if previous.get(k) != json.loads(json.dumps(plan[k])))
            raise UsageError(
                f"{store.root} holds a partial pack of another source or settings ({', '.join(changed)} "
                "differ); pass --overwrite to start over."
            )
        log.info("resuming the partial pack in %s", store.root)
    elif store.exists() and any(store.list_dir()):
        raise UsageError(f"{store.root} is not empty and holds no pack; choose an empty or new folder.")
    store.write_text(PLAN, json.dumps(plan, indent=1))


def _done_shards(store: Storage, split: str) -> list[dict]:
    """The complete shards of `split` already written (a resumed pack), in order."""
    import pyarrow.parquet as pq

    shards = []
    for name in store.list_dir(split)[1]:
        if name != f"part-{len(shards):05d}.parquet":
            break
        data = store.read_bytes(join(split, name))
        shards.append(
            _shard_entry(join(split, name), pq.ParquetFile(io.BytesIO(data)).metadata.num_rows, data)
        )
    return shards


def _shard_entry(path: str, rows: int, data: bytes) -> dict:
    """A shard as the manifest lists it."""
    return {"path": path, "rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _pack_split(
    store: Storage,
    split: str,
    items: Sequence[Item],
    classnames: Sequence[str],
    base: str,
    settings: _Settings,
    bar,
) -> tuple[list[dict], int]:
    """Write `split`'s shards (after those already complete); → (shard entries, unreadable count)."""
    shards = _done_shards(store, split)
    start = sum(s["rows"] for s in shards)
    bar.update(start)
    rows: dict = {c: [] for c in COLUMNS}
    size, unreadable, began = 0, 0, time.perf_counter()
    for item, data, ok in _images(items[start:], settings.max_short_side, settings.workers):
        unreadable += not ok
        rows["id"].append(relative_id(item.path, base))
        rows["image"].append(data)
        rows["label"].append(item.label)
        rows["classname"].append(classnames[item.label] if item.label < len(classnames) else "")
        size += len(data)
        bar.update(1)
        if settings.full(len(rows["id"]), size):
            shards.append(_flush(store, split, len(shards), rows, began))
            rows, size, began = {c: [] for c in COLUMNS}, 0, time.perf_counter()
    if rows["id"]:
        shards.append(_flush(store, split, len(shards), rows, began))
    if unreadable:
        log.warning(
            "%s: %d of %d images could not be read or decoded; stored as read",
            split,
            unreadable,
            len(items) - start,
        )
    return shards, unreadable


def _flush(store: Storage, split: str, index: int, rows: dict, began: float) -> dict:
    data = _shard_bytes(rows)
    path = join(split, f"part-{index:05d}.parquet")
    store.write_bytes(path, data)
    seconds = max(time.perf_counter() - began, 1e-9)
    log.info(
        "%s: %d images, %.1f MB (%.0f images/s, %.1f MB/s)",
        path,
        len(rows["id"]),
        len(data) / 1e6,
        len(rows["id"]) / seconds,
        len(data) / 1e6 / seconds,
    )
    return _shard_entry(path, len(rows["id"]), data)


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="packing", unit="img", disable=None if progress else True)


# --- reading without Ray ---------------------------------------------------------------------------


def read_pack_bytes(pack: str, split: str, ids: Optional[Sequence[str]] = None) -> dict[str, bytes]:
    """{id: encoded bytes} of `split`'s rows (of `ids` only, when given), read in this process."""
    import pyarrow.parquet as pq

    wanted = None if ids is None else set(ids)
    found: dict[str, bytes] = {}
    for path in open_pack(pack).shard_paths(split):
        table = pq.read_table(path, columns=["id", "image"])
        for ident, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
            if wanted is None or ident in wanted:
                found[ident] = data
    return found


def row_filter(split_ids: int, chosen: Sequence[str], others: Sequence[str]) -> tuple[str, frozenset]:
    """How a reader of a split's rows keeps `chosen` ids: ("all", ∅) when they are the whole split,
    ("exclude", others) when they are the split minus the (fewer) `others`, else ("include", chosen)."""
    if len(chosen) == split_ids:
        return "all", frozenset()
    if others and len(chosen) + len(others) == split_ids and len(others) < len(chosen):
        return "exclude", frozenset(others)
    return "include", frozenset(chosen)
