"""Datasets: readers for the benchmarks and a user's own images, splits, transforms (no Ray).

Readers return a `DatasetSplits` of `Item(path, label)`; images are decoded later, by the
pipeline, so reading a dataset's description is cheap even for ImageNet.
"""

from .layout import DatasetLayoutError, DatasetSplits, Item

__all__ = ["DatasetLayoutError", "DatasetSplits", "Item"]
