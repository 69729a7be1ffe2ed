"""What a job reads: its images section resolved to labelled splits (`open_splits`, both stages), and
for Stage II to image paths (or a Parquet table) and class names, plus the label-free held-out
slice (`resolve_source`). No Ray, no image is opened here.

Design decisions:
- The readers of `promptkd_ray.data` (benchmarks, split JSON, ImageFolder, Parquet, a toy-world
  domain) list the images; Stage II only picks the split and drops the labels: distillation never
  sees a label. Class names are kept, because computed class vectors need them.
- The held-out slice (for student–teacher agreement and KL, no labels) is a seeded random subset
  of the listed images, removed from training (at most a fifth of them), or, with
  `data.heldout_split: val`, a subset of another split, so training keeps the whole split as in the
  authors' protocol. Parquet rows have no
  path, so a row is held out when a hash of its bytes falls in the held-out fraction: the slice is
  disjoint from training and stable across epochs and runs, its size close to the requested one.
- `data.limit` (quick runs on a big dataset) is read here alone, for every kind: a seeded random
  subset of the listed paths or pack ids; a Parquet table is not listed, so its stream reads the
  table's first `limit` rows (`ParquetSource.limit`).
- A pack (`data.source: packed`, `promptkd-ray pack`) lists its images by pack id (the path relative
  to the packed source's base folder), in the source's order: the held-out slice, `data.limit` and
  `data.heldout_split` pick the same images as from the loose files, and the Ray pipeline reads the
  chosen ids' bytes from the pack's shards of `pack_splits`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..errors import ConfigError
from .layout import DatasetSplits

log = logging.getLogger(__name__)

MAX_HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class ListedSource:
    """Images listed one by one (by path or pack id): the training ids and the held-out slice's."""

    name: str  # dataset name (for logs and the run summary)
    classnames: tuple[str, ...]  # label order; () when the source has no class names
    train_paths: tuple[str, ...] = ()  # images to distil on (absolute paths, URIs or pack ids)
    heldout_paths: tuple[str, ...] = ()  # label-free held-out slice (never trained on)

    @property
    def num_train(self) -> int:
        return len(self.train_paths)

    @property
    def has_heldout(self) -> bool:
        return bool(self.heldout_paths)


@dataclass(frozen=True)
class PathSource(ListedSource):
    """Image files listed by path (a benchmark, split JSON, ImageFolder or toy-world domain)."""


@dataclass(frozen=True)
class PackSource(ListedSource):
    """A pack (`promptkd-ray pack`): the paths are its ids, the bytes are in its shards."""

    pack: str = ""  # pack folder or URI
    pack_splits: tuple[str, ...] = ()  # the pack's splits holding the training and the held-out ids


@dataclass(frozen=True)
class ParquetSource:
    """Rows of a Parquet table of encoded images: no paths; a row is held out by a hash of its bytes."""

    name: str
    classnames: tuple[str, ...]
    parquet: str  # Parquet file / folder / URI
    image_column: str = "image"  # column with encoded bytes
    image_field: Optional[str] = None  # "bytes" when that column is a struct (Hugging Face layout)
    parquet_rows: int = 0  # rows in the table
    heldout_fraction: float = 0.0  # fraction of rows held out (by byte hash)
    limit: int = 0  # data.limit: the stream reads the table's first `limit` rows (0 = all)

    @property
    def num_train(self) -> int:
        """Training rows, approximately (the held-out ones are known only once read): of the table's
        first `limit` rows when a limit is set, as the stream reads them."""
        rows = min(self.limit, self.parquet_rows) if self.limit else self.parquet_rows
        return int(round(rows * (1.0 - self.heldout_fraction)))

    @property
    def has_heldout(self) -> bool:
        return self.heldout_fraction > 0


ImageSource = Union[PathSource, PackSource, ParquetSource]  # what Stage II distils on, one type per kind


def read_names_file(path: str) -> tuple[str, ...]:
    """Class names from a text file (local or URI), one per line, in label order; blank lines skipped."""
    from .. import storage
    from ..errors import StorageError

    try:
        text = storage.read_bytes(path).decode("utf-8")
    except (StorageError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Expected a UTF-8 file of class names at {path}, one per line ({exc}).") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ConfigError(f"The class-name file {path} holds no names.")
    if len(set(names)) != len(names):
        raise ConfigError(
            f"The class-name file {path} names a class twice ({len(names) - len(set(names))} duplicates)."
        )
    return names


def vocabulary_names(vocabulary: str) -> tuple[str, ...]:
    """The class names of a vocabulary: a names file, or "toyworld" (the toy world's 108 names)."""
    if vocabulary == "toyworld":
        from ..toyworld import vocabulary as toy_vocabulary

        return tuple(toy_vocabulary())
    return read_names_file(vocabulary)


def open_world(images):
    """The toy world of a `toyworld` images section (built on first use, then read from its cache)."""
    from ..toyworld import build_world

    return build_world(images.root or None, seed=images.toyworld_seed, profile=images.toyworld_profile)


def domain_splits(domain) -> DatasetSplits:
    """A toy-world domain (`toyworld.ToyDomain`, on disk in the CoOp split-JSON layout) as the readers
    see it: train / val / test."""
    from .benchmarks import load_split_json_dataset

    return load_split_json_dataset(
        domain.root, domain.dataset_folder, domain.image_folder, domain.split_file.name, name=domain.name
    )


def open_splits(images, split: str = "train", world=None) -> DatasetSplits:
    """The labelled splits of a job's images section (`config.sections.ImagesConfig`): a benchmark,
    a split-JSON dataset, an ImageFolder tree (all of it in `split`), a toy-world domain or a pack."""
    if images.source == "benchmark":
        from .benchmarks import load_dataset

        return load_dataset(images.dataset, images.root)
    if images.source == "split_json":
        from .benchmarks import load_split_json_dataset

        return load_split_json_dataset(
            images.root, images.dataset, images.image_folder, images.split_file, name=images.dataset
        )
    if images.source == "imagefolder":
        from .folders import load_image_folder

        return load_image_folder(images.root, split="test" if split == "test" else "train")
    if images.source == "toyworld":
        try:
            return domain_splits((world or open_world(images)).domain(images.dataset or None))
        except KeyError as exc:
            raise ConfigError(f"data.dataset: {exc.args[0]}") from None
    if images.source == "packed":
        from .pack import open_pack

        return open_pack(images.root).splits()
    raise ValueError(
        f"data.source {images.source!r} does not list image paths."
    )  # parquet: see resolve_source


def resolve_source(data, seed: int, world=None) -> ImageSource:
    """The job's `data` section → its `ImageSource` (lists files / reads Parquet metadata)."""
    if data.source == "parquet":
        return _parquet_source(data)
    splits = open_splits(data, data.split, world)
    items = getattr(splits, data.split)
    if not items:
        raise ConfigError(f"{splits.name} has no images in its {data.split!r} split (data.split).")
    paths = [item.path for item in items]
    rng = np.random.default_rng(seed)
    if data.limit and data.limit < len(paths):
        paths = [paths[i] for i in sorted(rng.choice(len(paths), data.limit, replace=False))]
    if data.heldout_split and data.heldout_split != data.split:
        others = [item.path for item in getattr(splits, data.heldout_split)]
        count = min(data.heldout_images, len(others))
        train, heldout = paths, [others[i] for i in sorted(rng.choice(len(others), count, replace=False))]
    else:
        train, heldout = split_heldout(paths, data.heldout_images, rng)
    log.info(
        "%s/%s: %d images to distil on, %d held out (label-free)",
        splits.name,
        data.split,
        len(train),
        len(heldout),
    )
    listed = (splits.name, tuple(splits.classnames), tuple(train), tuple(heldout))
    if data.source == "packed":
        return PackSource(*listed, pack=data.root, pack_splits=(data.split, data.heldout_split or data.split))
    return PathSource(*listed)


def split_heldout(paths: list[str], requested: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Seeded random held-out subset of at most MAX_HELDOUT_FRACTION of `paths`; order kept."""
    count = min(requested, int(len(paths) * MAX_HELDOUT_FRACTION))
    if count < requested:
        log.info(
            "held-out slice limited to %d of the %d requested images (%.0f%% of %d)",
            count,
            requested,
            100 * MAX_HELDOUT_FRACTION,
            len(paths),
        )
    chosen = set(rng.choice(len(paths), count, replace=False).tolist()) if count else set()
    train = [p for i, p in enumerate(paths) if i not in chosen]
    heldout = [p for i, p in enumerate(paths) if i in chosen]
    return train, heldout


def _parquet_source(data) -> ParquetSource:
    from .parquet import load_parquet_images

    table = load_parquet_images(data.parquet, data.image_column)
    fraction = min(MAX_HELDOUT_FRACTION, data.heldout_images / max(table.num_rows, 1))
    log.info(
        "%s: %d rows, about %d held out (label-free)",
        data.parquet,
        table.num_rows,
        round(fraction * table.num_rows),
    )
    return ParquetSource(
        name=str(data.parquet).rstrip("/").rsplit("/", 1)[-1],
        classnames=table.classnames,
        parquet=data.parquet,
        image_column=data.image_column,
        image_field=table.image_field,
        parquet_rows=table.num_rows,
        heldout_fraction=fraction,
        limit=data.limit,
    )


def is_heldout_bytes(data: bytes, fraction: float) -> bool:
    """Parquet rows: held out iff crc32(bytes) falls in the first `fraction` of the hash range."""
    return fraction > 0 and zlib.crc32(data) < fraction * 2**32
