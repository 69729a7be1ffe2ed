"""Seeded k-shot sampling for Stage I (teacher prompts trained on k labelled images per class).

Design decisions
- Each class is sampled with its own generator, seeded from (seed, label), out of that class's
  items sorted by path. So the subset depends only on the *set* of items, the seed and k — not
  on the order the reader listed the files — and restricting to `labels` (e.g. the base classes)
  picks exactly the images the unrestricted call picks for those classes.
- A class with fewer than k items contributes all of them (logged), as in CoOp.
- The result is sorted by (label, path); shuffling is the data loader's job.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from typing import Iterable, Optional, Sequence

from promptkd_ray.data.layout import Item

log = logging.getLogger(__name__)


def sample_k_shot(
    items: Sequence[Item], k: int, seed: int, labels: Optional[Iterable[int]] = None
) -> tuple[Item, ...]:
    """k items per class (all of a class's items if it has fewer), deterministic in `seed`;
    only classes in `labels` when given."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    by_label: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    wanted = sorted(by_label) if labels is None else sorted(set(labels))
    absent = [label for label in wanted if label not in by_label]
    if absent:
        log.warning("k-shot sampling: no items for labels %s.", absent[:10])
    chosen: list[Item] = []
    short: list[int] = []
    for label in wanted:
        pool = sorted(by_label.get(label, ()), key=lambda item: item.path)
        if len(pool) <= k:
            chosen.extend(pool)
            if pool and len(pool) < k:
                short.append(label)
            continue
        rng = random.Random(f"{seed}:{label}")  # str seeds hash with SHA-512: stable across runs
        chosen.extend(sorted(rng.sample(pool, k), key=lambda item: item.path))
    if short:
        log.info("k-shot sampling: %d classes have fewer than %d items; all taken.", len(short), k)
    return tuple(chosen)
