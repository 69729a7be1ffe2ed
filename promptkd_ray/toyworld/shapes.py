"""The toy world's drawing primitives: a shape's supersampled mask, its outline, downsampling,
colour and placement jitter, and compositing a colour onto a background through a mask.

Design decisions:
- Pure numpy + PIL, no torch.
- A shape is drawn as a polygon (or a composite: ring, moon) on a 2× supersampled 'L' canvas
  with PIL, then box-downsampled, which antialiases edges. Outlines are the supersampled mask
  minus its erosion (PIL MinFilter), so every shape has an outline form without extra geometry.
- Jitter: position (±6 % of the side), scale (radius 30–42 %), rotation (±15°, small enough that
  a square never turns into a diamond) and a mirror flip; colours are jittered per image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .concepts import SHAPES

IMAGE_SIZE = 32
SUPERSAMPLE = 2
# Jitter: centre shift (fraction of the side), radius (fraction of the side), rotation. Tiny ViTs
# trained from scratch learn shapes slowly under large jitter (measured: ±10 % shift halves the
# accuracy reached in 400 supervised steps), so the jitter is moderate.
MAX_SHIFT = 0.06
RADIUS_RANGE = (0.30, 0.42)
MAX_ROTATION_DEG = 15.0


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, inner, phase=-math.pi / 2 + math.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def _cross(arm: float = 0.34) -> np.ndarray:
    a, b = arm, 0.95
    return np.array(
        [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    )


def _arrow() -> np.ndarray:
    return np.array(
        [(-0.95, -0.28), (0.15, -0.28), (0.15, -0.7), (0.95, 0.0), (0.15, 0.7), (0.15, 0.28), (-0.95, 0.28)]
    )


# Unit-radius outlines (x right, y down); composites are (outer, inner hole, hole offset).
_POLYGONS = {
    "circle": _regular(48),
    "square": np.array([(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]),
    "triangle": _regular(3) * np.array([1.0, 1.0]) + np.array([0.0, 0.2]),
    "star": _star(),
    "cross": _cross(),
    "heart": _heart(),
    "diamond": np.array([(0.0, -1.0), (0.58, 0.0), (0.0, 1.0), (-0.58, 0.0)]),
    "hexagon": _regular(6, phase=0.0),
    "arrow": _arrow(),
    "pentagon": _regular(5),
}
_COMPOSITES = {"ring": (0.55, (0.0, 0.0)), "moon": (0.85, (0.45, -0.2))}


def shape_mask(
    shape: str, cx: float, cy: float, radius: float, angle: float, mirror: bool, size: int
) -> Image.Image:
    """The filled shape as an 'L' image of side `size` (the supersampled canvas), 255 inside."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    flip = np.array([-1.0 if mirror else 1.0, 1.0])

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        pts = (points * flip) @ rot.T * radius + np.array([cx, cy])
        return [tuple(p) for p in pts]

    if shape in _POLYGONS:
        draw.polygon(place(_POLYGONS[shape]), fill=255)
    elif shape in _COMPOSITES:
        hole, offset = _COMPOSITES[shape]
        circle = _POLYGONS["circle"]
        draw.polygon(place(circle), fill=255)
        draw.polygon(place(circle * hole + np.array(offset)), fill=0)
    else:
        raise ValueError(f"Unknown shape {shape!r}; known shapes: {list(SHAPES)}.")
    return canvas


def outline(mask: Image.Image, width: int) -> Image.Image:
    """The band of `width` pixels inside the mask's border ('L', same size)."""
    eroded = mask.filter(ImageFilter.MinFilter(2 * width + 1))
    return Image.fromarray(
        np.subtract(np.asarray(mask), np.asarray(eroded), dtype=np.int16).clip(0, 255).astype(np.uint8)
    )


def downsample(mask: Image.Image, factor: int = SUPERSAMPLE) -> np.ndarray:
    """'L' image [S, S] → float alpha [S/f, S/f] in [0, 1] (box filter)."""
    a = np.asarray(mask, dtype=np.float32) / 255.0
    s = a.shape[0] // factor
    return a.reshape(s, factor, s, factor).mean(axis=(1, 3))


def jitter_colour(rgb, rng: np.random.Generator, amount: float = 18.0) -> np.ndarray:
    """An RGB anchor with per-channel noise and a brightness factor, float [3]."""
    c = np.asarray(rgb, dtype=np.float32) * rng.uniform(0.85, 1.1) + rng.normal(0.0, amount, 3)
    return np.clip(c, 0, 255).astype(np.float32)


def random_placement(rng: np.random.Generator, size: int) -> tuple[float, float, float, float, bool]:
    """(cx, cy, radius, angle in radians, mirror) in pixels of a canvas of side `size`."""
    radius = rng.uniform(*RADIUS_RANGE) * size
    cx, cy = size / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * size
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    return float(cx), float(cy), float(radius), angle, bool(rng.integers(2))


def composite(background: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    """background [H, W, 3] float, alpha [H, W] in [0, 1], colour [3] or [H, W, 3] → [H, W, 3]."""
    a = alpha[..., None]
    return background * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a
