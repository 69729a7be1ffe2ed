"""Datasets: readers for the benchmarks and a user's own images, splits, transforms (no Ray)."""
