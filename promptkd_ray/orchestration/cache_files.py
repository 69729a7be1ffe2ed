"""The soft-label cache's files (`orchestration/cache.py`): Parquet rows of views and teacher features.

parquet_bytes(batch)            a numpy batch of cache rows → the bytes of one Parquet file
read_part_file(root, rel)       one file → a numpy batch {"id", view (and mix) columns, "teacher_feature"}
with_members(rows, members, …)  a teacher ensemble: the same file of each further cache, zipped in
                                as `teacher_feature_1` … (same images, same views, same order)
"""

from __future__ import annotations

from ..data.decode import VIEW_COLUMNS
from ..data.mixup import MIX_COLUMNS
from ..errors import ConfigError
from ..storage import Storage

CACHE_COLUMNS = ["id", *VIEW_COLUMNS, "teacher_feature"]


def parquet_bytes(batch: dict) -> bytes:
    """A numpy batch of cache rows → Parquet bytes (teacher_feature as fixed_size_list<float16>[d])."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = np.ascontiguousarray(batch["teacher_feature"], dtype=np.float16)
    columns = {"id": pa.array([str(i) for i in batch["id"]], pa.string())}
    columns.update({c: pa.array(np.asarray(batch[c])) for c in VIEW_COLUMNS})
    if "mix_partner" in batch:  # a mixup cache: each view's partner, its box and λ
        columns["mix_partner"] = pa.array([str(p) for p in batch["mix_partner"]], pa.string())
        columns.update({c: pa.array(np.asarray(batch[c])) for c in MIX_COLUMNS[1:]})
    columns["teacher_feature"] = pa.FixedSizeListArray.from_arrays(
        pa.array(features.reshape(-1)), features.shape[1]
    )
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue()


def read_part_file(storage_root: str, rel: str) -> dict:
    """One cache file → a numpy batch {"id", view columns, "teacher_feature" float16 [b, d]}."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(Storage(storage_root).read_bytes(rel)))
    feature = table.column("teacher_feature").combine_chunks()
    batch = {"id": np.asarray(table.column("id").to_pylist(), dtype=object)}
    batch.update({c: table.column(c).to_numpy() for c in VIEW_COLUMNS})
    if "mix_partner" in table.column_names:
        batch["mix_partner"] = np.asarray(table.column("mix_partner").to_pylist(), dtype=object)
        batch.update({c: table.column(c).to_numpy() for c in MIX_COLUMNS[1:]})
    batch["teacher_feature"] = feature.flatten().to_numpy().reshape(len(table), feature.type.list_size)
    return batch


def member_column(i: int) -> str:
    """The column of ensemble member i's features (i ≥ 1; the job's own teacher is `teacher_feature`)."""
    return f"teacher_feature_{i}"


def with_members(rows: dict, members: tuple, rel: str) -> dict:
    """`rows` of cache file `rel` with the ensemble `members`' (cache roots) features of their file
    `rel` added as `member_column(i)`: the same images and views in the same order, or one sentence."""
    import numpy as np

    for i, root in enumerate(members, 1):
        other = read_part_file(root, rel)
        same = ["id", *VIEW_COLUMNS, *(c for c in MIX_COLUMNS if c in rows or c in other)]
        if not all(c in other and c in rows and np.array_equal(other[c], rows[c]) for c in same):
            raise ConfigError(
                f"teacher.ensemble cache {root}: {rel} holds other images or views than the job's cache "
                "there; an ensemble's caches must hold the same views."
            )
        rows[member_column(i)] = other["teacher_feature"]
    return rows
