"""Packs: a dataset's images as Parquet shards of encoded bytes with a manifest (`promptkd-ray pack`).

    PACK/train/part-00000.parquet …    id (the image's path relative to the source's base folder),
    PACK/val/…  PACK/test/…            image (encoded bytes), label (int32), classname
    PACK/manifest.json                 source, classes, per split: images and shards (rows, bytes,
                                       sha256), re-encode setting — written last

    open_pack(root)                   the manifest, read and checked (`Pack`)
    Pack.splits()                     the pack as a `PackedSplits`: items named by their pack ids
    read_pack_bytes(pack, split, ids) {id: bytes} of a split's rows, read in this process
    row_filter(...)                   how a reader keeps a split's chosen ids (`orchestration.packs`)

A pack is written by `pack_writer.write_pack` (its design decisions are there).

Design decisions:
- An image's id is its path relative to the base folder common to every listed file, so ids are
  stable across machines and mounts, name the same file as the loose source (the base is in the
  manifest), and the held-out slice, `data.limit` and the bad-image ledger work on them as on
  paths. Rows keep the source's order within each split, so a job seeded s holds out the same
  images from the pack as from the loose files.
- The manifest is written last, atomically: a pack without one is partial and never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import DatasetLayoutError, StorageError
from ..storage import Storage
from .layout import DatasetSplits, Item

PACK_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "pack_plan.json"  # the settings of a pack in progress, checked when it is resumed
SPLITS = ("train", "val", "test")
ROW_GROUP = 256  # images per Parquet row group
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
