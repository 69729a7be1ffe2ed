"""Batch inference: the normalised image features of labelled items, on Ray Data or in-process.

    from_items(path, label, index) → map_batches(decode, test transform; CPU tasks)
      → map_batches(ItemEncoder, compute=ActorPoolStrategy(size=k), num_gpus=1 where the cluster has GPUs)

Design decisions:
- An actor builds its model once from a `ModelRef` (a student artifact, a teacher artifact or a
  zero-shot spec), so `eval`, `predict` and the demo run the very model the artifact describes,
  under the caller's autocast precision (`Encoding.precision`; the teacher pool's rule, `encoder.py`).
- Images go through the one decoder (`data.decode`, mode "test": the authors' Resize → CenterCrop,
  with the caller's `DecodeOptions`: pixel limit, EXIF rule) and travel as uint8; any path or URI
  is read (`storage`).
- Rows come back in any order and are sorted by index. Unreadable images are returned with their
  reasons (`Encoded.unreadable`): whether that is an error is the caller's decision (evaluation:
  it is, unless asked to report them beside the score).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..core.artifacts import ModelRef
from ..data.decode import DecodeOptions, decode_views
from .bookkeeping import start_ledger
from .cluster import has_gpus
from .encoder import ImageEncoder

log = logging.getLogger(__name__)


def _decode(batch: dict, size: int, options: DecodeOptions = DecodeOptions()) -> tuple[dict, list]:
    """numpy batch {id, label, index (, bytes)} → ({image uint8 [b, s, s, 3], label, index, id}, unreadable)."""
    blobs = {"bytes": batch["bytes"]} if "bytes" in batch else {}  # a pack's rows carry their bytes
    rows, bad = decode_views({"id": batch["id"], **blobs}, size, "test", options=options)
    position = {ident: i for i, ident in enumerate(batch["id"])}
    keep = [position[ident] for ident in rows["id"]]
    return {
        "image": rows["image"],
        "label": np.asarray(batch["label"])[keep],
        "index": np.asarray(batch["index"])[keep],
        "id": rows["id"],
    }, bad


def decode_batch(batch: dict, size: int, ledger, options: DecodeOptions = DecodeOptions()) -> dict:
    """Ray Data task: `_decode`; the unreadable files go to `ledger` (a `BadImageLedger` actor)."""
    import ray

    rows, bad = _decode(batch, size, options)
    if bad:
        ray.get(ledger.record.remote(bad))
    return rows


class ItemEncoder(ImageEncoder):
    """Ray Data callable class: the features of a batch of decoded items (`encoder.ImageEncoder`)."""

    def __call__(self, batch: dict) -> dict:
        return {
            "feature": self.encode(batch["image"]).numpy(),
            "label": batch["label"],
            "index": batch["index"],
            "id": batch["id"],
        }


@dataclass(frozen=True)
class Encoding:
    """How `encode_items` runs: on Ray Data with `actors` encoder actors (`use_ray`) or in this
    process; images per batch; the autocast `precision` (the job's, `encoder.ImageEncoder`); the
    decoder's options (pixel limit, EXIF rule)."""

    use_ray: bool = True
    batch_size: int = 64
    actors: int = 1
    precision: str = "auto"
    options: DecodeOptions = DecodeOptions()


@dataclass
class Encoded:
    features: torch.Tensor  # [M, d] normalised, in item order (unreadable items removed)
    labels: torch.Tensor  # [M]
    paths: list[str]
    unreadable: dict = field(default_factory=dict)  # path → reason, for the items that could not be decoded

    @property
    def skipped(self) -> int:
        return len(self.unreadable)


def encode_items(
    model: ModelRef, paths: Sequence[str], labels: Sequence[int], how: Encoding = Encoding(), pack: str = ""
) -> Encoded:
    """Features of the images at `paths` (local or URIs; with `pack`, ids of that pack's test split,
    read from its shards) under `model`, encoded `how` says (on the connected cluster's Ray Data, or
    in this process)."""
    size = model.image_size()
    items = [
        {"id": str(p), "label": int(label), "index": i} for i, (p, label) in enumerate(zip(paths, labels))
    ]
    if how.use_ray:
        rows, unreadable = _encode_with_ray(model, items, size, how, pack)
    else:
        rows, unreadable = _encode_in_process(model, _with_pack_bytes(items, pack), size, how)
    rows.sort(key=lambda r: int(r["index"]))
    features = torch.from_numpy(np.stack([r["feature"] for r in rows])) if rows else torch.zeros(0, 0)
    return Encoded(
        features=features,
        labels=torch.tensor([int(r["label"]) for r in rows], dtype=torch.long),
        paths=[str(r["id"]) for r in rows],
        unreadable=unreadable,
    )


def _encode_in_process(model: ModelRef, items: list, size: int, how: Encoding):
    encoder, rows, unreadable = ItemEncoder(model, how.precision), [], {}
    for start in range(0, len(items), how.batch_size):
        chunk = items[start : start + how.batch_size]
        batch, bad = _decode(
            {k: np.asarray([it[k] for it in chunk], dtype=object) for k in chunk[0]}, size, how.options
        )
        unreadable.update(bad)
        if len(batch["id"]):
            out = encoder(batch)
            rows += [{k: out[k][i] for k in out} for i in range(len(out["index"]))]
    return rows, unreadable


def _with_pack_bytes(items: list, pack: str) -> list:
    """`items`, each with its bytes from the pack's test split (unchanged without a pack)."""
    if not pack:
        return items
    from ..data.pack import read_pack_bytes

    blobs = read_pack_bytes(pack, "test", [it["id"] for it in items])
    return [dict(it, bytes=blobs.get(it["id"], b"")) for it in items]


def _encode_with_ray(model: ModelRef, items: list, size: int, how: Encoding, pack: str = ""):
    import ray

    from .packs import pack_items

    ledger = start_ledger()
    ds = pack_items(pack, "test", items) if pack else ray.data.from_items(items)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"size": size, "ledger": ledger, "options": how.options},
        batch_format="numpy",
        batch_size=how.batch_size,
    )
    ds = ds.map_batches(
        ItemEncoder,
        fn_constructor_kwargs={"model": model, "precision": how.precision},
        batch_format="numpy",
        batch_size=how.batch_size,
        num_gpus=1 if has_gpus() else 0,
        compute=ray.data.ActorPoolStrategy(size=how.actors),
    )
    rows = list(ds.iter_rows())
    unreadable = ray.get(ledger.items.remote())
    ray.kill(ledger)
    return rows, unreadable
