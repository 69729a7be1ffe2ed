"""The one image decoder: bytes (local file or URI) → RGB → a rendered view, uint8 → model input.

    read_image(path | bytes)                  any local path or URI (`promptkd_ray.storage`)
    render_view(image, view, size)            crop box in source pixels + flip, resized (bicubic)
    render_test(image, size)                  Resize(size, bicubic) → CenterCrop(size): the test transform
    to_model_input(uint8 [B, S, S, 3])        → CLIP-normalised float32 [B, 3, S, S], on any device
    decode_views(batch, size, mode)           a batch of ids (and bytes) → rows of views + the unreadable ones
    view_rng(seed, image_id, slot)            the generator that draws an image's view in a slot
    decode_recorded(batch, size)              re-render recorded views (the soft-label cache's replay)

Design decisions:
- Every stage decodes here: Stage II's decode tasks, Stage I's few-shot batches, batch inference
  for `eval` / `predict`. An image is rendered to uint8 pixels (4× smaller than float32 through
  the object store) and normalised on the consumer's device; the uint8 round trip is exact, so a
  rendered view equals torchvision's RandomResizedCrop + flip + ToTensor + Normalize bit for bit
  (tested against torchvision).
- Train rows keep their view (crop box in source pixels + flip), drawn with
  `transforms.sample_view` (the authors' RandomResizedCrop + flip) in "train" mode or
  `full_view` in "heldout" mode, so the teacher and the student see the same view and any row can
  be replayed from its file. "test" rows are the test transform and carry no view.
- A file that is not a readable image (corrupt, truncated, not an image, vanished) is dropped from
  the batch and returned in `bad` with its reason; the caller decides to count it (skip) or to
  raise `BadImageError` (fail). Nothing here imports Ray.
- Seeded views: with a seed, an image's view is a pure function of (seed, image id, view slot)
  (`view_rng`; Stage II's slot is the epoch), so re-running a job draws the same views, a retried
  task redraws the very same view, and a stored view can be told from a fresh one. Without a seed
  views come from fresh OS entropy.
"""

from __future__ import annotations

import hashlib
import io
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .. import storage
from .transforms import CLIP_MEAN, CLIP_STD, CROP_SCALE, View, full_view, sample_view

VIEW_COLUMNS = ("view_top", "view_left", "view_height", "view_width", "view_flip")
MODES = ("train", "heldout", "test")


def read_image(source: "str | bytes") -> Image.Image:
    """Decode image bytes, or the bytes of a local path or URI, to RGB; raises on anything that is
    not a readable image."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else storage.read_bytes(source)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def render_view(image: Image.Image, view: View, size: int) -> np.ndarray:
    """`view` of an RGB image, resized (bicubic) to size×size → uint8 [size, size, 3]."""
    crop = TF.resized_crop(image, view.top, view.left, view.height, view.width, [size, size],
                           interpolation=InterpolationMode.BICUBIC)
    if view.flip:
        crop = TF.hflip(crop)
    return np.array(crop, dtype=np.uint8)


def render_test(image: Image.Image, size: int) -> np.ndarray:
    """The authors' test transform before normalisation: Resize(size, bicubic) → CenterCrop(size)."""
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    return np.array(TF.center_crop(image, [size, size]), dtype=np.uint8)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] (any device) → CLIP-normalised float32 [B, 3, S, S]."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_view(path: str, size: int, rng: Optional[np.random.Generator] = None,
              crop_scale_min: float = CROP_SCALE[0]) -> torch.Tensor:
    """One image as model input [3, size, size]: a random train view (when `rng` is given) or the
    test transform."""
    image = read_image(path)
    if rng is None:
        pixels = render_test(image, size)
    else:
        pixels = render_view(image, sample_view(*image.size, rng, scale=(crop_scale_min, CROP_SCALE[1])), size)
    return to_model_input(torch.from_numpy(pixels)[None])[0]


def view_rng(seed: int, image_id: str, slot: int) -> np.random.Generator:
    """The generator of `image_id`'s view in view slot `slot` of a run seeded `seed`: independent of
    the batch the image lands in, of the task and of the machine."""
    key = int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, slot, key])


def decode_views(batch: dict, size: int, mode: str = "train", seed: Optional[int] = None, slot: int = 0,
                 crop_scale_min: float = CROP_SCALE[0]) -> tuple[dict, list]:
    """Decode a batch {"id": [B] str, ("bytes": [B] bytes)} and render one view per readable image
    (train crops cover a fraction `crop_scale_min` … 1 of the image area; the authors' 0.08). With a
    `seed`, each train view is drawn by `view_rng(seed, id, slot)`; without, from fresh entropy.

    Returns (rows, bad): rows {"id", "image": uint8 [b, S, S, 3]} plus, in train / heldout mode,
    the view columns `VIEW_COLUMNS`; bad = [(id, reason), …] for unreadable files (b ≤ B).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    fresh = np.random.default_rng() if seed is None else None
    ids = [str(i) for i in batch["id"]]
    blobs = batch.get("bytes")
    images, views, keep, bad = [], [], [], []
    for i, ident in enumerate(ids):
        try:
            image = read_image(blobs[i] if blobs is not None else ident)
        except Exception as exc:  # any unreadable file: PIL errors, truncation, OSError, a vanished file
            bad.append((ident, f"{type(exc).__name__}: {exc}"))
            continue
        if mode == "test":
            images.append(render_test(image, size))
        else:
            rng = fresh if seed is None else view_rng(seed, ident, slot)
            view = sample_view(*image.size, rng, scale=(crop_scale_min, CROP_SCALE[1])) if mode == "train" \
                else full_view(*image.size)
            images.append(render_view(image, view, size))
            views.append(view)
        keep.append(i)
    rows = {"id": np.asarray([ids[i] for i in keep], dtype=object),
            "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)}
    if mode != "test":
        rows.update({column: np.asarray([getattr(v, column[5:]) for v in views], dtype)
                     for column, dtype in zip(VIEW_COLUMNS, (np.int32,) * 4 + (bool,))})
    return rows, bad


def decode_recorded(batch: dict, size: int) -> tuple[dict, list]:
    """Re-render recorded views: a batch {"id", the view columns, "teacher_feature"} → rows {"id",
    "image": uint8 [b, S, S, 3], "teacher_feature"} and the unreadable ids (as `decode_views`)."""
    ids = [str(i) for i in batch["id"]]
    images, keep, bad = [], [], []
    for i, ident in enumerate(ids):
        try:
            image = read_image(ident)
        except Exception as exc:  # any unreadable file, as in decode_views
            bad.append((ident, f"{type(exc).__name__}: {exc}"))
            continue
        images.append(render_view(image, row_view({c: batch[c][i] for c in VIEW_COLUMNS}), size))
        keep.append(i)
    features = np.asarray(batch["teacher_feature"])
    rows = {"id": np.asarray([ids[i] for i in keep], dtype=object),
            "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
            "teacher_feature": features[keep] if keep else features[:0]}
    return rows, bad


def row_view(row: dict) -> View:
    """The `View` stored in a decoded row (to replay it)."""
    return View(int(row["view_top"]), int(row["view_left"]), int(row["view_height"]), int(row["view_width"]),
                bool(row["view_flip"]))
