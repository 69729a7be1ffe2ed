"""Image styles of the toy world: backgrounds, shape drawing and post-processing.

Every style is a function `(mask, colour, rng, size) -> float [size, size, 3]` in 0…255, where
`mask` is the shape's supersampled 'L' canvas (255 inside) and `colour` the jittered RGB [3].

Styles, from the "web" corpora's point of view:
- photo, noisy, blurry, cartoon, striped, pixel: filled shapes on photographic, flat or
  patterned backgrounds (the student's narrow corpus uses photo / noisy / blurry only);
- sketch (coloured outline on paper with grey pen clutter), neon (glowing outline on a dark
  background), dotted (shape filled with a dot print): the teacher's wider web;
- doodle: coloured outline on lined notebook paper with pen clutter — the default domain's
  style. No corpus contains it; the teacher saw its ingredients (sketch, striped), the student
  none of them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import SUPERSAMPLE, composite, downsample, outline

StyleFn = Callable[[Image.Image, np.ndarray, np.random.Generator, int], np.ndarray]


# --- backgrounds: float [size, size, 3] ---------------------------------------------------------


def _muted(rng: np.random.Generator) -> np.ndarray:
    return 0.45 * rng.uniform(0, 255, 3) + 0.55 * rng.uniform(60, 200)


def bg_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    c1, c2 = _muted(rng), _muted(rng)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None] + 1.0) / 2.0
    return c1 * (1 - ramp[..., None]) + c2 * ramp[..., None]


def bg_blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise: a random 4×4 image upsampled bilinearly."""
    small = np.stack([_muted(rng) for _ in range(16)]).reshape(4, 4, 3).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR), dtype=np.float32)


def bg_flat(rng: np.random.Generator, size: int, lo: float = 170, hi: float = 250) -> np.ndarray:
    return np.broadcast_to(rng.uniform(lo, hi, 3).astype(np.float32), (size, size, 3)).copy()


def bg_stripes(rng: np.random.Generator, size: int, contrast: float = 1.0) -> np.ndarray:
    c1, c2 = _muted(rng), _muted(rng)
    c2 = c1 + contrast * (c2 - c1)
    period = rng.uniform(3.0, 8.0)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period + rng.uniform(0, 1)
    band = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)[..., None]
    return c1 * band + c2 * (1 - band)


def bg_paper(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(225, 252) + rng.normal(0, 4, 3)
    return base + rng.normal(0, 3.0, (size, size, 1)).astype(np.float32)


def bg_lined_paper(rng: np.random.Generator, size: int) -> np.ndarray:
    """Notebook paper: pale background with blue ruled lines and a red margin."""
    img = bg_paper(rng, size)
    spacing = rng.integers(4, 7)
    offset = rng.integers(0, spacing)
    line = np.array([150, 180, 235], dtype=np.float32)
    img[offset::spacing, :, :] = 0.4 * img[offset::spacing, :, :] + 0.6 * line
    margin = rng.integers(2, 7)
    img[:, margin, :] = 0.5 * img[:, margin, :] + 0.5 * np.array([230, 110, 110], dtype=np.float32)
    return img


def bg_dark(rng: np.random.Generator, size: int) -> np.ndarray:
    return bg_flat(rng, size, 5, 45) + rng.normal(0, 2.0, (size, size, 1)).astype(np.float32)


# --- post-processing --------------------------------------------------------------------------


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return img + rng.normal(0.0, sigma, img.shape).astype(np.float32)


def blur(img: np.ndarray, radius: float) -> np.ndarray:
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def pixelate(img: np.ndarray, cells: int) -> np.ndarray:
    size = img.shape[0]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(
        pil.resize((cells, cells), Image.BOX).resize((size, size), Image.NEAREST), dtype=np.float32
    )


def pen_clutter(rng: np.random.Generator, size: int, strokes: int) -> np.ndarray:
    """Alpha [size, size] of a few random pen strokes (lines and arcs)."""
    hi = size * SUPERSAMPLE
    canvas = Image.new("L", (hi, hi), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(strokes):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, hi, 4))
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(2, 4)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 4, max(y0, y1) + 4]
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=255, width=2)
    return downsample(canvas)


def _shaded(colour: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """The fill colour with a soft linear light ramp, [size, size, 3]."""
    ramp = np.linspace(rng.uniform(0.8, 0.95), rng.uniform(1.0, 1.12), size, dtype=np.float32)
    ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    return colour * ramp[..., None]


# --- styles -----------------------------------------------------------------------------------


def style_photo(mask, colour, rng, size):
    bg = bg_gradient(rng, size) if rng.random() < 0.5 else bg_blobs(rng, size)
    return add_noise(composite(bg, downsample(mask), _shaded(colour, rng, size)), 4.0, rng)


def style_noisy(mask, colour, rng, size):
    return add_noise(style_photo(mask, colour, rng, size), rng.uniform(15.0, 30.0), rng)


def style_blurry(mask, colour, rng, size):
    return blur(style_photo(mask, colour, rng, size), rng.uniform(0.8, 1.4))


def style_cartoon(mask, colour, rng, size):
    img = composite(bg_flat(rng, size), downsample(mask), colour * 1.05)
    return composite(img, downsample(outline(mask, 2)), np.full(3, 20.0, np.float32))


def style_striped(mask, colour, rng, size):
    img = composite(bg_stripes(rng, size), downsample(mask), _shaded(colour, rng, size))
    return add_noise(img, 4.0, rng)


def style_pixel(mask, colour, rng, size):
    return pixelate(style_photo(mask, colour, rng, size), int(rng.integers(8, 12)))


def style_sketch(mask, colour, rng, size):
    img = composite(
        bg_paper(rng, size),
        pen_clutter(rng, size, int(rng.integers(1, 4))) * 0.8,
        np.full(3, 90.0, np.float32),
    )
    img = composite(img, downsample(outline(mask, int(rng.integers(2, 4)))), colour * 0.9)
    return add_noise(img, 3.0, rng)


def style_neon(mask, colour, rng, size):
    line = downsample(outline(mask, 2))
    glow = (
        np.asarray(
            Image.fromarray((line * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)),
            dtype=np.float32,
        )
        / 255.0
    )
    bright = np.clip(colour * 1.25 + 30.0, 0, 255)
    img = bg_dark(rng, size) + glow[..., None] * bright * 0.9
    return composite(img, line, bright)


def style_dotted(mask, colour, rng, size):
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(3, 5))
    dots = (((yy % period) < 2) & ((xx % period) < 2)).astype(np.float32)
    alpha = downsample(mask)
    img = composite(bg_flat(rng, size, 200, 250), alpha * 0.25, colour)
    return add_noise(composite(img, alpha * dots, colour), 3.0, rng)


def style_doodle(mask, colour, rng, size):
    img = composite(
        bg_lined_paper(rng, size),
        pen_clutter(rng, size, int(rng.integers(2, 5))) * 0.85,
        np.full(3, 70.0, np.float32),
    )
    img = composite(img, downsample(outline(mask, int(rng.integers(2, 4)))), colour * 0.9)
    return add_noise(img, 5.0, rng)


STYLES: dict[str, StyleFn] = {
    "photo": style_photo,
    "noisy": style_noisy,
    "blurry": style_blurry,
    "cartoon": style_cartoon,
    "striped": style_striped,
    "pixel": style_pixel,
    "sketch": style_sketch,
    "neon": style_neon,
    "dotted": style_dotted,
    "doodle": style_doodle,
}
