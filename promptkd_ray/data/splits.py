"""Base / novel class splits (docs/protocol.md, base-to-novel protocol).

Classes are sorted by label; base = the first ⌈N/2⌉ labels, novel = the rest.
"""

from __future__ import annotations

import math


def num_base_classes(num_classes: int) -> int:
    if num_classes < 2:
        raise ValueError(f"A base/novel split needs at least 2 classes, got {num_classes}.")
    return math.ceil(num_classes / 2)


def base_novel_split(num_classes: int) -> tuple[list[int], list[int]]:
    """→ (base labels, novel labels)."""
    m = num_base_classes(num_classes)
    return list(range(m)), list(range(m, num_classes))
