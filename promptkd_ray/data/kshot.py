"""Stage I's k-shot images: the readable ones of a sample, and each worker's batches of an epoch.

Design decisions:
- Few-shot data is small (16 × classes), so workers decode images themselves (`decode.load_view`,
  with the job's pixel limit and EXIF rule), without Ray Data.
- Every worker draws the same seeded permutation of the items per epoch and takes its strided
  share; crops/flips come from a generator seeded by (seed, epoch, rank): runs are reproducible.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .decode import DecodeOptions, load_view, read_image

log = logging.getLogger(__name__)


def readable_items(items: Sequence, options: DecodeOptions, threads: int = 8) -> tuple[list, list]:
    """(the items whose image decodes, [(path, reason)] of the others), each decoded once."""

    def reason(item) -> str:
        try:
            read_image(item.path, options)
            return ""
        except Exception as exc:  # any unreadable file, as in `decode.decode_views`
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        reasons = list(pool.map(reason, items))
    bad = [(item.path, r) for item, r in zip(items, reasons) if r]
    for path, r in bad:
        log.warning("skipping unreadable k-shot image %s (%s)", path, r)
    if bad:
        log.warning("%d of %d k-shot images are unreadable and left out", len(bad), len(items))
    return [item for item, r in zip(items, reasons) if not r], bad


@dataclass(frozen=True)
class KShotBatches:
    """The training batches of k-shot `items` ([`layout.Item`]), epoch after epoch."""

    items: tuple
    batch_size: int  # the global batch (all workers together)
    seed: int
    size: int  # image side in pixels
    crop_scale_min: float = 0.08  # random resized crops: the least share of the image's area
    options: DecodeOptions = DecodeOptions()

    @property
    def steps(self) -> int:
        """Steps per epoch (drop_last, but at least one)."""
        return max(len(self.items) // self.batch_size, 1)

    def epoch(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Worker `rank`'s (images [b, 3, size, size], labels [b]) batches of one epoch; drop_last
        when there is at least one full global batch, else one smaller batch."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        mine, per_worker = order[rank::world], self.batch_size // world
        rng = np.random.default_rng([self.seed, epoch, rank, 7])
        for b in range(self.steps):
            chunk = [self.items[i] for i in mine[b * per_worker : (b + 1) * per_worker]]
            if not chunk:
                return
            images = torch.stack(
                [load_view(item.path, self.size, rng, self.crop_scale_min, self.options) for item in chunk]
            )
            yield images, torch.tensor([item.label for item in chunk])
