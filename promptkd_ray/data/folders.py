"""Readers for a user's own domain: an ImageFolder tree, a plain image folder (Parquet: `parquet.py`).

Design decisions
- `load_image_folder(root)`: one class per sub-folder of `root`, labels = sorted folder names,
  class names = the folder names as written ("_" kept; the text side makes the prompt). Images are
  found recursively inside each class folder, like torchvision's `ImageFolder`; only files with
  an image extension count, hidden entries are skipped. The items fill one split (`train` by
  default, for distillation on unlabeled images; `split="test"` for evaluation).
- `list_images(root)`: every image under `root`, recursively, sorted — for prediction on a
  folder without classes.
- Roots and paths may be local or URIs (see `promptkd_ray.data.layout`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from promptkd_ray.data.layout import (
    DatasetLayoutError,
    DatasetSplits,
    Item,
    is_image_file,
    preview,
    require_dir,
)
from promptkd_ray.storage import Storage, join

log = logging.getLogger(__name__)


def _walk_images(storage: Storage, rel: str) -> list[str]:
    """Relative paths of all images under `rel`, recursively, in sorted order."""
    dirs, files = storage.list_dir(rel)
    found = [join(rel, f) for f in files if is_image_file(f)]
    for sub in dirs:
        found.extend(_walk_images(storage, join(rel, sub)))
    return found


def list_images(root: str | Path) -> tuple[str, ...]:
    """Absolute paths (or URIs) of every image under `root`, recursively, sorted."""
    storage = Storage(root)
    require_dir(storage, "", "the image folder", "images")
    paths = tuple(storage.path(rel) for rel in _walk_images(storage, ""))
    if not paths:
        raise DatasetLayoutError(
            f"Expected image files (.jpg, .png, …) under {storage.path('')}, found none."
        )
    return paths


def load_image_folder(root: str | Path, name: Optional[str] = None, split: str = "train") -> DatasetSplits:
    """An ImageFolder tree (`root/<class>/…/<image>`) as a `DatasetSplits` whose `split`
    ("train" or "test") holds every image; `name` defaults to the folder's base name."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    storage = Storage(root)
    dataset = name or os.path.basename(storage.root.rstrip("/")) or "images"
    require_dir(storage, "", "the image folder", dataset)
    classes, files = storage.list_dir("")
    if not classes:
        raise DatasetLayoutError(
            f"{dataset}: expected one sub-folder per class in {storage.path('')}, found "
            f"{'only the files ' + preview(files) if files else 'an empty folder'}."
        )
    items: list[Item] = []
    for label, folder in enumerate(classes):
        rels = _walk_images(storage, folder)
        if not rels:
            raise DatasetLayoutError(
                f"{dataset}: expected at least one image in the class folder "
                f"{storage.path(folder)}, found none."
            )
        items.extend(Item(storage.path(rel), label) for rel in rels)
    splits = {"train": (), "test": ()}
    splits[split] = tuple(items)
    result = DatasetSplits(dataset, tuple(classes), **splits)
    log.info("%s (from %s)", result.summary(), storage.root)
    return result
