"""Datasets: readers for the benchmarks and a user's own images, splits, views and the one decoder
(no Ray).

Readers return a `DatasetSplits` of `Item(path, label)`; images are decoded later, by
`data.decode` (in Ray Data tasks, or in a worker), so reading a dataset's description is cheap
even for ImageNet.
"""

from ..errors import DatasetLayoutError
from .layout import DatasetSplits, Item

__all__ = ["DatasetLayoutError", "DatasetSplits", "Item"]
