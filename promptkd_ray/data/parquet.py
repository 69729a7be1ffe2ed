"""Parquet files of encoded images: a schema check and a row count, reading no image.

Design decisions
- `load_parquet_images(path, image_column, label_column)`: validates the schema and counts rows
  from Parquet metadata, reading no image; the Ray pipeline streams the rows itself. The image
  column holds encoded bytes, either as `binary` or as a struct with a `bytes` field (the
  Hugging Face datasets layout). A string label column is mapped to labels by sorted distinct
  value (`ParquetImages.classnames`); an integer column is used as is.
- A path may be a local file or folder, or a URI (pyarrow datasets read both).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DatasetLayoutError
from .layout import preview

log = logging.getLogger(__name__)


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
        path=str(path),
        image_column=image_column,
        label_column=label_column,
        num_rows=data.count_rows(),
        columns=columns,
        image_field=image_field,
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
