"""Reading a pack (`data/pack.py`) on Ray Data: a split's shards → rows {id, bytes (, label)} of chosen ids.

    from_items(row groups) → map_batches(read each row group) → map_batches(keep the chosen ids)

Design decisions:
- Rows are kept by id, not by position, so Stage II's held-out slice and `data.limit` (chosen over
  the pack's ids by `data.sources`, exactly as over loose paths) and eval's test items select the
  same images from the shards as from the files. The ids travel once through the object store
  and each worker process keeps them (`_PROCESS_CACHE`); the common cases cost nothing: the whole
  split ("all") or the split minus a few hundred held-out ids ("exclude").
- One read task per row group (`ROW_GROUP` images), reading it with pyarrow, rather than Ray
  Data's `read_parquet`: measured on a loaded 2-core machine (6 shards of 32 MB in tmpfs), row-group
  tasks streamed 742 images/s where `read_parquet` gave 28, and the stream has one block
  per row group, so decode tasks run in parallel even on a pack of one shard.
- The image column arrives as "bytes": the decode tasks read `{"id", "bytes"}` like any other batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..data.pack import open_pack, row_filter

_PROCESS_CACHE: dict = {}  # per worker process and use: (object ref's hex, its value)


def _process_cached(use: str, ref):
    """The value of object `ref`, fetched once per worker process (kept under `use` until another
    ref comes for it)."""
    import ray

    if _PROCESS_CACHE.get(use, ("",))[0] != ref.hex():
        _PROCESS_CACHE[use] = (ref.hex(), ray.get(ref))
    return _PROCESS_CACHE[use][1]


def _kept(batch: dict, rule: str, ids_ref) -> dict:
    """Ray Data task: the rows of `batch` that `rule` ("all" / "include" / "exclude") keeps."""
    if rule == "all":
        return batch
    ids = _process_cached("ids", ids_ref)
    keep = np.asarray([(str(i) in ids) == (rule == "include") for i in batch["id"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def _read_row_groups(batch: dict, labels: bool) -> dict:
    """Ray Data task: row groups {path, group} of a pack's shards → rows {id, bytes (, label)}."""
    import pyarrow.parquet as pq

    from ..storage import open_input_file

    columns = ["id", "image"] + ["label"] * labels
    parts = []
    for path, group in zip(batch["path"], batch["group"]):
        parts.append(pq.ParquetFile(open_input_file(str(path))).read_row_group(int(group), columns=columns))
    rows = {
        "id": np.asarray([i for t in parts for i in t.column("id").to_pylist()], dtype=object),
        "bytes": np.asarray([b for t in parts for b in t.column("image").to_pylist()], dtype=object),
    }
    if labels:
        rows["label"] = np.asarray(
            [label for t in parts for label in t.column("label").to_pylist()], dtype=np.int64
        )
    return rows


def pack_rows(
    pack: str,
    split: str,
    chosen: Optional[Sequence[str]] = None,
    others: Sequence[str] = (),
    labels: bool = False,
):
    """A Ray dataset of `split`'s rows {id, bytes (, label)}: of the `chosen` ids (None: all),
    `others` being the rest of the split's ids when that is cheaper to test (see `row_filter`)."""
    import ray

    opened = open_pack(pack)
    groups = [{"path": path, "group": g} for path, g in opened.row_groups(split)]
    ds = ray.data.from_items(groups, override_num_blocks=max(len(groups), 1))
    ds = ds.map_batches(_read_row_groups, batch_size=1, batch_format="numpy", fn_kwargs={"labels": labels})
    if chosen is None:
        return ds
    rule, ids = row_filter(opened.manifest["splits"].get(split, {}).get("images", 0), chosen, others)
    if rule == "all":
        return ds
    return ds.map_batches(_kept, batch_format="numpy", fn_kwargs={"rule": rule, "ids_ref": ray.put(ids)})


def source_rows(source, mode: str):
    """Stage II's rows {id, bytes} of a packed `ImageSource` (`data.sources`): its training ids
    (`mode` "train") or its held-out ids, from the pack splits that hold them."""
    train_split, heldout_split = source.pack_splits
    same = train_split == heldout_split
    if mode == "train":
        return pack_rows(source.pack, train_split, source.train_paths, source.heldout_paths if same else ())
    return pack_rows(source.pack, heldout_split, source.heldout_paths, source.train_paths if same else ())


def _with_index(batch: dict, index_ref) -> dict:
    """Ray Data task: eval rows {id, bytes} → {id, bytes, label, index} (the items' label and order)."""
    index = _process_cached("index", index_ref)
    found = [index[str(i)] for i in batch["id"]]
    return {
        "id": batch["id"],
        "bytes": batch["bytes"],
        "label": np.asarray([f[0] for f in found], np.int64),
        "index": np.asarray([f[1] for f in found], np.int64),
    }


def pack_items(pack: str, split: str, items: Sequence[dict]):
    """Batch inference's rows {id, bytes, label, index} of `items` ({id, label, index}; ids of the
    pack's `split`), read from the pack's shards."""
    import ray

    index_ref = ray.put({it["id"]: (it["label"], it["index"]) for it in items})
    ds = pack_rows(pack, split, [it["id"] for it in items])
    return ds.map_batches(_with_index, batch_format="numpy", fn_kwargs={"index_ref": index_ref})
