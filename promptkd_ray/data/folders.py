"""Readers for a user's own domain: an ImageFolder tree, a plain image folder, a Parquet file.

Design decisions
- `load_image_folder(root)`: one class per sub-folder of `root`, labels = sorted folder names,
  class names = the folder names as written ("_" kept; the text side makes the prompt). Images are
  found recursively inside each class folder, like torchvision's `ImageFolder`; only files with
  an image extension count, hidden entries are skipped. The items fill one split (`train` by
  default, for distillation on unlabeled images; `split="test"` for evaluation).
- `list_images(root)`: every image under `root`, recursively, sorted — for prediction on a
  folder without classes.
- `load_parquet_images(path, image_column, label_column)`: validates the schema and counts rows
  from Parquet metadata, reading no image; the Ray pipeline streams the rows itself. The image
  column holds encoded bytes, either as `binary` or as a struct with a `bytes` field (the
  Hugging Face datasets layout). A string label column is mapped to labels by sorted distinct
  value (`ParquetImages.classnames`); an integer column is used as is.
- Roots and paths may be local or URIs (see `promptkd_ray.data.layout`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from promptkd_ray.data.layout import (
    DatasetLayoutError,
    DatasetSplits,
    Item,
    Storage,
    is_image_file,
    join,
    preview,
    require_dir,
)

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


def load_image_folder(
    root: str | Path, name: Optional[str] = None, split: str = "train"
) -> DatasetSplits:
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


@dataclass(frozen=True)
class ParquetImages:
    path: str  # the Parquet file or folder of Parquet files, as given
    image_column: str  # column with encoded image bytes
    label_column: Optional[str]  # integer or string labels; None = unlabeled
    num_rows: int  # from Parquet metadata
    columns: tuple[str, ...]  # all column names, in schema order
    image_field: Optional[str] = None  # "bytes" when the image column is a struct (HF layout)
    classnames: tuple[str, ...] = ()  # sorted distinct values of a string label column


def load_parquet_images(
    path: str | Path, image_column: str, label_column: Optional[str] = None
) -> ParquetImages:
    """Validate a Parquet file (or folder of files) of encoded images; reads no image."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        data = pads.dataset(str(path), format="parquet")
        schema = data.schema
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
        raise DatasetLayoutError(
            f"Expected a readable Parquet file or folder at {path}, found an error ({exc})."
        ) from exc
    columns = tuple(schema.names)
    image_field = _image_field(schema, image_column, columns, path)
    classnames: tuple[str, ...] = ()
    if label_column is not None:
        classnames = _label_classnames(data, schema, label_column, columns, path)
    result = ParquetImages(
        path=str(path), image_column=image_column, label_column=label_column,
        num_rows=data.count_rows(), columns=columns, image_field=image_field,
        classnames=classnames,
    )
    log.info("%s: %d rows, columns %s", path, result.num_rows, ", ".join(columns))
    return result


def _require_column(column: str, columns: tuple[str, ...], path: object) -> None:
    if column not in columns:
        raise DatasetLayoutError(
            f"Expected a column {column!r} in {path}, found only {preview(list(columns))}."
        )


def _image_field(schema, column: str, columns: tuple[str, ...], path: object) -> Optional[str]:
    import pyarrow.types as pat

    _require_column(column, columns, path)
    kind = schema.field(column).type
    if pat.is_binary(kind) or pat.is_large_binary(kind):
        return None
    if pat.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        inner = kind.field("bytes").type
        if pat.is_binary(inner) or pat.is_large_binary(inner):
            return "bytes"
    raise DatasetLayoutError(
        f"Expected column {column!r} of {path} to hold encoded image bytes (binary, or a struct "
        f"with a binary 'bytes' field), found type {kind}."
    )


def _label_classnames(data, schema, column: str, columns: tuple[str, ...], path: object):
    import pyarrow.compute as pc
    import pyarrow.types as pat

    _require_column(column, columns, path)
    kind = schema.field(column).type
    if pat.is_dictionary(kind):
        kind = kind.value_type
    if pat.is_integer(kind):
        labels = data.to_table(columns=[column]).column(column)
        if labels.null_count or (len(labels) and pc.min(labels).as_py() < 0):
            raise DatasetLayoutError(
                f"Expected non-negative, non-null labels in column {column!r} of {path}, "
                f"found a null or negative label."
            )
        return ()
    if pat.is_string(kind) or pat.is_large_string(kind):
        values = data.to_table(columns=[column]).column(column)
        if values.null_count:
            raise DatasetLayoutError(
                f"Expected a class name in every row of column {column!r} of {path}, "
                f"found {values.null_count} null rows."
            )
        return tuple(sorted(pc.unique(values.cast("string")).to_pylist()))
    raise DatasetLayoutError(
        f"Expected integer or string labels in column {column!r} of {path}, found type {kind}."
    )
