"""Replayable views: the parameters of the authors' train augmentation, drawn apart from its pixels.

The train augmentation is the authors' RandomResizedCrop(size, scale=(0.08, 1.0), bicubic) +
RandomHorizontalFlip + CLIP normalisation, split into two halves so that a view can be stored and
replayed exactly (consistent teaching: teacher and student see the same view):
- `sample_view(width, height, rng)` draws the view parameters (crop box, flip) — torchvision's
  RandomResizedCrop algorithm, driven by a numpy Generator so that a seed fixes it;
- `decode.render_view(image, view, size)` renders that view (the one decoder renders every view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class View:
    """A crop box in source-image pixels (top, left, height, width) and a horizontal flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_view(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale=CROP_SCALE,
    ratio=CROP_RATIO,
    flip_prob: float = 0.5,
) -> View:
    """torchvision's RandomResizedCrop.get_params (10 tries, then a central crop) + a coin flip."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box = (top, left, h, w)
            break
    if box is None:  # fall back to a central crop at the nearest allowed ratio
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(rng.random() < flip_prob)
    return View(*box, flip=flip)


def full_view(width: int, height: int) -> View:
    """The whole image, unflipped (used for the label-free held-out slice)."""
    return View(0, 0, height, width, False)
