"""The vocabulary every dataset reader shares: items, splits, layout errors and storage access.

Design decisions
- A labelled dataset is described in memory as plain paths + integer labels (`Item`) grouped
  into splits (`DatasetSplits`). Reading a dataset opens no image: decoding belongs to the Ray
  Data pipeline, where it runs in parallel.
- Every layout problem a user can cause ends in `DatasetLayoutError`, a `ValueError` whose
  message is one sentence saying what was expected and what was found (with the folder's
  actual content when that helps to spot a renamed file).
- A data root is a local folder or a URI (`s3://bucket/data`, `gs://…`, `file:///…`), read
  through `promptkd_ray.storage.Storage` (local folders with `os.scandir`, URIs with `pyarrow.fs`).
  Item paths are absolute local paths, or URIs under the same root.
- Listings skip hidden entries (names starting with ".") and are sorted, so every reader is
  deterministic whatever the file system's order. Class folders keep only files with an image
  extension (`IMAGE_EXTENSIONS`, case-insensitive).
- Image files named by a text file (split JSON, FGVC lists) are checked by `check_item_files`:
  "sample" (default) stats an evenly spaced sample of at most `SAMPLE_CHECKS` files per split,
  which catches a wrong image folder or path prefix at no cost; "all" stats every file (slow on
  network storage for large sets); "none" skips the check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import DatasetLayoutError, StorageError
from ..storage import Storage, join

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
CHECK_FILES_MODES = ("sample", "all", "none")
SAMPLE_CHECKS = 32  # files stat'ed per split in check_files="sample" mode
_PREVIEW = 8  # names shown when an error lists a folder's content


@dataclass(frozen=True)
class Item:
    path: str  # absolute path or URI of the image file
    label: int  # 0..N-1, index into DatasetSplits.classnames


@dataclass(frozen=True)
class DatasetSplits:
    name: str  # canonical dataset name, e.g. "OxfordPets"
    classnames: tuple[str, ...]  # index = label; text as in the source ("_" kept)
    train: tuple[Item, ...]
    test: tuple[Item, ...]
    val: tuple[Item, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def summary(self) -> str:
        return (
            f"{self.name}: {self.num_classes} classes, train {len(self.train)} / "
            f"val {len(self.val)} / test {len(self.test)} images"
        )


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def preview(names: Sequence[str]) -> str:
    """`a, b, c` — at most `_PREVIEW` names, then the count of the rest."""
    shown = ", ".join(str(n) for n in names[:_PREVIEW])
    rest = len(names) - _PREVIEW
    return f"{shown} and {rest} more" if rest > 0 else shown


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _missing(storage: Storage, rel: str, what: str, dataset: str) -> DatasetLayoutError:
    parent = _parent(rel)
    if storage.is_dir(parent):
        dirs, files = storage.list_dir(parent)
        names = [f"{d}/" for d in dirs] + list(files)
        found = f"it holds {preview(names)}" if names else "it is empty"
        where = f"found no such entry in {storage.path(parent)} ({found})"
    else:
        where = f"found that {storage.path(parent)} does not exist either"
    return DatasetLayoutError(f"{dataset}: expected {what} {storage.path(rel)}, but {where}.")


def require_dir(storage: Storage, rel: str, what: str, dataset: str) -> None:
    if not storage.is_dir(rel):
        raise _missing(storage, rel, what, dataset)


def require_file(storage: Storage, rel: str, what: str, dataset: str) -> None:
    if not storage.is_file(rel):
        raise _missing(storage, rel, what, dataset)


def read_json(storage: Storage, rel: str, dataset: str) -> object:
    try:
        return json.loads(storage.read_text(rel))
    except (json.JSONDecodeError, StorageError) as exc:
        raise DatasetLayoutError(
            f"{dataset}: expected {storage.path(rel)} to be UTF-8 JSON, found a parse error ({exc})."
        ) from exc


def class_folder_items(
    storage: Storage, image_dir: str, folders: Iterable[str], dataset: str
) -> tuple[Item, ...]:
    """Items for class folders `folders` (label = position) inside `image_dir`."""
    folders = list(folders)
    progress = None
    if len(folders) >= 100:  # ImageNet-sized: listing takes seconds, show progress
        from tqdm import tqdm

        progress = tqdm(total=len(folders), desc=f"listing {dataset}", unit="class", disable=None)
    items: list[Item] = []
    for label, folder in enumerate(folders):
        rel = join(image_dir, folder)
        files = [f for f in storage.list_dir(rel)[1] if is_image_file(f)]
        if not files:
            raise DatasetLayoutError(
                f"{dataset}: expected at least one image in the class folder {storage.path(rel)}, found none."
            )
        items.extend(Item(storage.path(join(rel, f)), label) for f in files)
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    return tuple(items)


def check_item_files(
    storage: Storage, rel_paths: Sequence[str], mode: str, dataset: str, source: str
) -> None:
    """Check that image files named by `source` (a split file) exist; see the module docstring."""
    if mode not in CHECK_FILES_MODES:
        raise ValueError(f"check_files must be one of {CHECK_FILES_MODES}, got {mode!r}.")
    if mode == "none" or not rel_paths:
        return
    step = 1 if mode == "all" else max(1, len(rel_paths) // SAMPLE_CHECKS)
    checked = list(rel_paths[::step])
    if checked[-1] != rel_paths[-1]:
        checked.append(rel_paths[-1])
    missing = [rel for rel in checked if not storage.is_file(rel)]
    if missing:
        raise DatasetLayoutError(
            f"{dataset}: expected the image file {storage.path(missing[0])} listed in {source}, "
            f"found no such file ({len(missing)} of {len(checked)} checked files are missing)."
        )
