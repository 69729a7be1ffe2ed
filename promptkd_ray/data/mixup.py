"""Consistent mixup (ours; off by default): a train view may blend two images, and the teacher labels
the blended pixels, so the cache stores and replays a mixed view like any other.

    Mixup(alpha, prob, partners)        the setting (`data.mixup_alpha`, `data.mixup_prob`) and the
                                        job's training image ids the partners are drawn from
    draw_view(image, ident, rng, …)     an image's view of a slot: its own crop box + flip (as today),
                                        then, with mixup on, maybe a partner, its box + flip and λ
    blend(own, other, λ)                round(λ·own + (1 − λ)·other) of two rendered uint8 crops
                                        (`decode.render` renders a view, mixed or not)
    mix_columns(views) / row_mix(row)   the mix as cache columns and back

Design decisions:
- Function matching (Beyer et al., CVPR 2022): teacher and student see the same mixed image, and the
  target is the teacher's output on it — no label is mixed, so it fits unlabeled distillation.
- A mixed view stays a pure function of (seed, image id, view slot): it continues the image's own
  view generator (`decode.view_rng`) after its crop and flip are drawn, so with mixup off every
  view is drawn exactly as before. The partner is drawn by index over the job's training images
  (never the image itself), its crop box and flip by the same generator from the partner's size,
  λ ~ Beta(alpha, alpha) rounded to float32 (the value stored, so a replay blends exactly alike).
- The blend is done on the two rendered uint8 crops in float64 and rounded to uint8: deterministic,
  so a replayed mixed view equals the streamed one pixel for pixel.
- A partner that cannot be read leaves the view unmixed (logged); the partner itself is counted as
  unreadable where it is a view's own image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np

from .transforms import CROP_SCALE, View, sample_view

log = logging.getLogger(__name__)

MIX_COLUMNS = ("mix_partner", "mix_lambda", "mix_top", "mix_left", "mix_height", "mix_width", "mix_flip")


@dataclass(frozen=True)
class Mix:
    """A view's partner: its image id, its crop box + flip, and the view's own weight λ."""

    partner: str
    lam: float  # a float32 value: the own crop's weight; the partner's is 1 − λ
    box: View


@dataclass(frozen=True)
class MixedView(View):
    """A view that blends its own crop with a partner's (`mix`)."""

    mix: Optional[Mix] = None


@dataclass(frozen=True)
class Mixup:
    """The mixup setting and the training image ids partners are drawn from (`alpha` 0: off)."""

    alpha: float = 0.0  # λ ~ Beta(alpha, alpha)
    prob: float = 1.0  # the share of train views that are mixed
    partners: Sequence[str] = ()  # the job's training image ids (any sequence; never copied)

    @property
    def on(self) -> bool:
        return self.alpha > 0

    def key(self) -> dict:
        """The setting as a cache key sees it ({} when off, so caches without mixup keep their key)."""
        return {"mixup": {"alpha": float(self.alpha), "prob": float(self.prob)}} if self.on else {}


def draw_view(
    image,
    ident: str,
    rng: np.random.Generator,
    crop_scale_min: float,
    mixup: Mixup,
    open_partner: Callable,
) -> View:
    """`ident`'s view from `rng`: its crop box + flip, then (mixup on) maybe a partner: drawn by
    index, never `ident` itself; `open_partner(id)` → the partner's RGB image."""
    scale = (crop_scale_min, CROP_SCALE[1])
    view = sample_view(*image.size, rng, scale=scale)
    if not mixup.on or len(mixup.partners) < 2 or rng.random() >= mixup.prob:
        return view
    j = int(rng.integers(len(mixup.partners)))
    partner = str(mixup.partners[j])
    if partner == ident:
        partner = str(mixup.partners[(j + 1) % len(mixup.partners)])
    lam = float(np.float32(rng.beta(mixup.alpha, mixup.alpha)))
    try:
        size = open_partner(partner).size
    except Exception as exc:  # an unreadable partner: counted where it is a view's own image
        log.warning("mixup partner %s of %s is unreadable (%s); the view is not mixed", partner, ident, exc)
        return view
    box = sample_view(*size, rng, scale=scale)
    return MixedView(*_fields(view), mix=Mix(partner, lam, box))


def _fields(view: View) -> tuple:
    return view.top, view.left, view.height, view.width, view.flip


def blend(own: np.ndarray, other: np.ndarray, lam: float) -> np.ndarray:
    """round(λ·own + (1 − λ)·other) of two uint8 crops → uint8."""
    mixed = lam * own.astype(np.float64) + (1.0 - lam) * other.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def mix_columns(views: Sequence[View]) -> dict:
    """The views' mixes as cache columns (an unmixed view: partner "", λ 1, an empty box)."""
    mixes = [getattr(v, "mix", None) for v in views]
    none = Mix("", 1.0, View(0, 0, 0, 0, False))
    mixes = [m or none for m in mixes]
    columns = {
        "mix_partner": np.asarray([m.partner for m in mixes], dtype=object),
        "mix_lambda": np.asarray([m.lam for m in mixes], dtype=np.float32),
    }
    for name in ("top", "left", "height", "width"):
        columns[f"mix_{name}"] = np.asarray([getattr(m.box, name) for m in mixes], dtype=np.int32)
    columns["mix_flip"] = np.asarray([m.box.flip for m in mixes], dtype=bool)
    return columns


def row_mix(view: View, row: dict) -> View:
    """`view` with the mix stored in a cache `row` (the view itself when the row has none)."""
    partner = str(row.get("mix_partner", "") or "")
    if not partner:
        return view
    box = View(*(int(row[f"mix_{n}"]) for n in ("top", "left", "height", "width")), bool(row["mix_flip"]))
    return MixedView(*_fields(view), mix=Mix(partner, float(np.float32(row["mix_lambda"])), box))


def with_partners(mixup: Mixup, partners: Sequence[str]) -> Mixup:
    """`mixup` drawing from `partners` (the job's training image ids)."""
    return replace(mixup, partners=partners) if mixup.on else mixup
