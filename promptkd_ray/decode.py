"""Decode + augment: the CPU stage of the Stage II pipeline, as plain functions on numpy batches.

    {"id": [B] str, ("bytes": [B] bytes)}  ──decode_views──►  {"id", "image": uint8 [b, S, S, 3],
                                                               "view_top", "view_left", "view_height",
                                                               "view_width", "view_flip"}   (b ≤ B)

Design decisions:
- Each row keeps its view (crop box in source pixels + flip), drawn with `transforms.sample_view`
  (the authors' RandomResizedCrop + flip) in "train" mode or `full_view` in "heldout" mode, so the
  teacher and the student see the same view and any row can be replayed from its file.
- Views travel as uint8 pixels (4× smaller than float32 through the object store); CLIP
  normalisation happens on the consumer's device (`to_model_input`). `render_view` +
  `to_model_input` equal `transforms.apply_view` exactly (tested).
- A file that is not a readable image (corrupt, truncated, not an image, vanished) is dropped from
  the batch and returned in `bad` with its reason; the caller decides to count it (skip) or to
  raise `BadImageError` (fail). Nothing here imports Ray.
- Views are drawn from fresh OS entropy unless a seed is given: every epoch sees new views.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .data.transforms import CLIP_MEAN, CLIP_STD, CROP_SCALE, View, full_view, load_rgb, sample_view

log = logging.getLogger(__name__)

VIEW_COLUMNS = ("view_top", "view_left", "view_height", "view_width", "view_flip")
MODES = ("train", "heldout")


class BadImageError(ValueError):
    """A file that is not a readable image, with `data.on_bad_image: fail`."""


def read_bytes(path: str) -> bytes:
    """The bytes of a local file or of a URI (any pyarrow file system: s3://, gs://, hdfs://)."""
    if "://" not in path:
        with open(path, "rb") as f:
            return f.read()
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as f:
        return f.read()


def render_view(image: Image.Image, view: View, size: int) -> np.ndarray:
    """`view` of an RGB image, resized (bicubic) to size×size → uint8 [size, size, 3]."""
    crop = TF.resized_crop(image, view.top, view.left, view.height, view.width, [size, size],
                           interpolation=InterpolationMode.BICUBIC)
    if view.flip:
        crop = TF.hflip(crop)
    return np.array(crop, dtype=np.uint8)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] (any device) → CLIP-normalised float32 [B, 3, S, S]."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def decode_views(batch: dict, size: int, mode: str = "train", seed: Optional[int] = None,
                 crop_scale_min: float = CROP_SCALE[0]) -> tuple[dict, list]:
    """Decode a batch and render one view per readable image (train crops cover a fraction
    `crop_scale_min` … 1 of the image area; the authors' 0.08 by default).

    Returns (rows, bad): rows as in the module docstring, bad = [(id, reason), …] for unreadable files.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in batch["id"]]
    blobs = batch.get("bytes")
    images, views, keep, bad = [], [], [], []
    for i, ident in enumerate(ids):
        try:
            image = load_rgb(bytes(blobs[i]) if blobs is not None else read_bytes(ident))
        except Exception as exc:  # any unreadable file: PIL errors, truncation, OSError, bombs
            bad.append((ident, f"{type(exc).__name__}: {exc}"))
            continue
        width, height = image.size
        if mode == "train":
            view = sample_view(width, height, rng, scale=(crop_scale_min, CROP_SCALE[1]))
        else:
            view = full_view(width, height)
        images.append(render_view(image, view, size))
        views.append(view)
        keep.append(i)
    rows = {
        "id": np.asarray([ids[i] for i in keep], dtype=object),
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        "view_top": np.asarray([v.top for v in views], np.int32),
        "view_left": np.asarray([v.left for v in views], np.int32),
        "view_height": np.asarray([v.height for v in views], np.int32),
        "view_width": np.asarray([v.width for v in views], np.int32),
        "view_flip": np.asarray([v.flip for v in views], bool),
    }
    return rows, bad


def row_view(row: dict) -> View:
    """The `View` stored in a decoded row (to replay it)."""
    return View(int(row["view_top"]), int(row["view_left"]), int(row["view_height"]), int(row["view_width"]),
                bool(row["view_flip"]))
