"""Procedural renderer: one coloured shape per image, in one of several styles.

Design decisions:
- Pure numpy + PIL, no torch: the same function feeds contrastive pretraining (in memory) and
  the domains written to disk as PNG files.
- A shape is drawn by `shapes.py` (supersampled mask, outline, jitter); a *style* (`styles.py`)
  is a background + a way of drawing the shape + post-processing (noise, blur,
  pixelation). Styles differ enough that a CLIP which never saw one transfers poorly to it:
  that is what makes the teacher (which saw many styles) better than the student on a domain.
- Determinism: everything random comes from the `numpy.random.Generator` passed in.

Shapes: images are uint8 [size, size, 3] (HWC, RGB); a batch is [B, size, size, 3].
"""

from __future__ import annotations

import numpy as np

from .concepts import COLOURS
from .shapes import IMAGE_SIZE, SUPERSAMPLE, jitter_colour, random_placement, shape_mask
from .styles import STYLES


def render_image(
    colour: str, shape: str, style: str, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """One image of a `colour` `shape` in `style` → uint8 [size, size, 3]."""
    if colour not in COLOURS:
        raise ValueError(f"Unknown colour {colour!r}; known colours: {list(COLOURS)}.")
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; known styles: {sorted(STYLES)}.")
    hi = size * SUPERSAMPLE
    mask = shape_mask(shape, *random_placement(rng, hi), size=hi)
    image = STYLES[style](mask, jitter_colour(COLOURS[colour], rng), rng, size)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def render_batch(concepts, styles, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """[(colour, shape)] × [style] → uint8 [B, size, size, 3]."""
    if len(concepts) != len(styles):
        raise ValueError(f"render_batch needs one style per concept, got {len(concepts)} and {len(styles)}.")
    out = np.empty((len(concepts), size, size, 3), dtype=np.uint8)
    for i, ((colour, shape), style) in enumerate(zip(concepts, styles)):
        out[i] = render_image(colour, shape, style, rng, size)
    return out
