"""The one image decoder: bytes (local file or URI) → RGB → a rendered view, uint8 → model input.

    read_image(path | bytes, options)         any local path or URI (`promptkd_ray.storage`) → RGB
    DecodeOptions(max_pixels, exif)           the pixel limit and EXIF rule (`data.max_image_pixels`,
                                              `data.exif_orientation`), sent to every decode task
    render_view(image, view, size)            crop box in source pixels + flip, resized (bicubic)
    render(image, view, size, open_partner)   the same, a mixed view blended with its partner's crop
    render_test(image, size)                  Resize(size, bicubic) → CenterCrop(size): the test transform
    to_model_input(uint8 [B, S, S, 3])        → CLIP-normalised float32 [B, 3, S, S], on any device
    decode_views(batch, size, mode)           a batch of ids (and bytes) → rows of views + the unreadable ones
    view_rng(seed, image_id, slot)            the generator that draws an image's view in a slot
    decode_recorded(batch, size)              re-render recorded views (the soft-label cache's replay)
    (consistent mixup — a view blending two images, `data.mixup_alpha` — is drawn in `mixup.py`)

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
- Readable oddities decode as the authors' Dassl `read_image` does, `Image.open(path).convert("RGB")`:
  palette, grayscale, CMYK and YCbCr images are converted; an alpha channel (RGBA, LA, a palette's
  transparency) is dropped, so transparent pixels show the colour stored under them; an animated
  GIF / WebP gives its first frame; the format is sniffed from the bytes, never the file name (a
  JPEG named .png decodes). One exception: 16-bit and 32-bit integer images (modes I;16*, I), which
  convert("RGB") clips to white, are scaled from 0…65535 to 0…255. Tiny and extreme-aspect images
  (1 × 1, 600 × 2) decode; where no random box fits, RandomResizedCrop's fallback (a central crop
  at the nearest allowed aspect ratio) is their train view. The test transform resizes the short
  side to S first, so a sliver whose resized image would exceed the pixel limit (at least PIL's
  default; e.g. 20,000 × 1 at S = 224: 4,480,000 × 224) is refused as unreadable in test mode,
  before that allocation.
- Decompression bombs are refused without being decoded: `Image.open` only reads the header, and
  an image declaring more than `max_pixels` (width × height) pixels raises `ImageTooLargeError`
  before `load()` allocates anything, whatever PIL's global `Image.MAX_IMAGE_PIXELS` says (this
  module never sets it; where PIL's own check refuses the header first, the reason says so). The
  default, 89,478,485, is PIL's own `MAX_IMAGE_PIXELS` (PIL warns above it and refuses above twice
  it): ~270 MB as RGB, which fits a decode task's reserved memory (a higher limit decodes such
  images, with PIL's DecompressionBombWarning). A refused image is an unreadable one (skipped and
  counted, or an error in evaluation).
- Colour and grey JPEGs (most of a crawl) are decoded by torchvision's libjpeg-turbo decoder, the
  rest by PIL: the same pixels (benchmarks/ingest.py: max |Δ| 0 over 500 photo-sized JPEGs, teacher
  features identical), 1.36× PIL's decode rate per core there. CMYK JPEGs and `exif_orientation:
  apply` take PIL's path.
- EXIF orientation is ignored by default, as the authors' code (PIL does not apply it); with
  `exif_orientation="apply"` the image is first rotated / flipped upright (`ImageOps.exif_transpose`).
- Seeded views: with a seed, an image's view is a pure function of (seed, image id, view slot)
  (`view_rng`; Stage II's slot is the epoch), so re-running a job draws the same views, a retried
  task redraws the very same view, and a stored view can be told from a fresh one. Without a seed
  views come from fresh OS entropy.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .. import storage
from .limits import DEFAULT_MAX_IMAGE_PIXELS, EXIF_ORIENTATIONS, PIL_REFUSAL_PIXELS
from .mixup import MIX_COLUMNS, Mixup, blend, draw_view, mix_columns, row_mix
from .transforms import CLIP_MEAN, CLIP_STD, CROP_SCALE, View, full_view, sample_view

VIEW_COLUMNS = ("view_top", "view_left", "view_height", "view_width", "view_flip")
MODES = ("train", "heldout", "test")
WIDE_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # scaled 0…65535 → 0…255, not clipped


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the decode limit (refused undecoded)."""


@dataclass(frozen=True)
class DecodeOptions:
    """How files become RGB images: the pixel limit and the EXIF orientation rule."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # width × height above which an image is refused undecoded
    exif_orientation: str = "ignore"  # "ignore" (the authors) or "apply" (rotate / flip upright first)

    def __post_init__(self):
        if not 1 <= self.max_pixels <= PIL_REFUSAL_PIXELS:
            raise ValueError(f"max_pixels must be in 1 … {PIL_REFUSAL_PIXELS:,}, got {self.max_pixels}.")
        if self.exif_orientation not in EXIF_ORIENTATIONS:
            raise ValueError(
                f"exif_orientation must be one of {EXIF_ORIENTATIONS}, got {self.exif_orientation!r}."
            )

    @classmethod
    def of(cls, data) -> "DecodeOptions":
        """The options of a job's images section (`data.max_image_pixels`, `data.exif_orientation`)."""
        return cls(data.max_image_pixels, data.exif_orientation)


def read_image(source: "str | bytes", options: DecodeOptions = DecodeOptions()) -> Image.Image:
    """Decode image bytes, or the bytes of a local path or URI, to RGB; raises on anything that is
    not a readable image, and `ImageTooLargeError` (before decoding) on one over the pixel limit."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else storage.read_bytes(source)
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:  # PIL's message names a BytesIO object: say what the bytes were
        raise UnidentifiedImageError(f"not an image format PIL can read ({_first_bytes(data)})") from None
    except Image.DecompressionBombError as exc:  # over PIL's own threshold, hence over ours too
        raise ImageTooLargeError(
            f"{str(exc).rstrip('.')} (PIL), over the limit of {options.max_pixels:,} "
            "(data.max_image_pixels); refused before decoding"
        ) from None
    check_pixels(img.size, options.max_pixels)
    if img.format == "JPEG" and img.mode in ("RGB", "L") and options.exif_orientation == "ignore":
        return decode_jpeg(data)
    img.load()  # in-memory bytes: nothing to close (closing would free the pixels returned below)
    if options.exif_orientation == "apply":
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def decode_jpeg(data: bytes) -> Image.Image:
    """A colour or grey JPEG → RGB through torchvision's libjpeg-turbo decoder: the same pixels as
    PIL's `convert("RGB")` (benchmarks/ingest.py: max |Δ| 0 over 500 photo-sized JPEGs), faster."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    try:
        pixels = tv_decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:  # corrupt or truncated data
        raise OSError(f"not a readable JPEG ({str(exc).splitlines()[0]})") from None
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def _first_bytes(data: bytes) -> str:
    return f"{len(data)} bytes, starting {data[:16]!r}" if data else "an empty file"


def check_pixels(size: tuple, max_pixels: int) -> None:
    """Refuse an image whose declared width × height exceeds `max_pixels`."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"declares {width} × {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (data.max_image_pixels); refused before decoding"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """The authors' `convert("RGB")`, except that wide integer images are scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_INTEGER_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def render_view(image: Image.Image, view: View, size: int) -> np.ndarray:
    """`view` of an RGB image, resized (bicubic) to size×size → uint8 [size, size, 3]."""
    crop = TF.resized_crop(
        image,
        view.top,
        view.left,
        view.height,
        view.width,
        [size, size],
        interpolation=InterpolationMode.BICUBIC,
    )
    if view.flip:
        crop = TF.hflip(crop)
    return np.array(crop, dtype=np.uint8)


def render(image: Image.Image, view: View, size: int, open_partner) -> np.ndarray:
    """`view` of `image` as uint8 [size, size, 3]; a mixed view (`mixup.MixedView`) blends in its
    partner's crop (`open_partner(id)` → the partner's RGB image; it raises when that is unreadable)."""
    mix = getattr(view, "mix", None)
    own = render_view(image, View(view.top, view.left, view.height, view.width, view.flip), size)
    return own if mix is None else blend(own, render_view(open_partner(mix.partner), mix.box, size), mix.lam)


def render_test(image: Image.Image, size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """The authors' test transform before normalisation: Resize(size, bicubic) → CenterCrop(size);
    `ImageTooLargeError` when the resized image would exceed the pixel limit (at least PIL's
    default, so that a small limit still lets small images be upscaled): an extreme sliver."""
    width, height = resized_size(*image.size, size)
    limit = max(max_pixels, DEFAULT_MAX_IMAGE_PIXELS)
    if width * height > limit:
        raise ImageTooLargeError(
            f"{image.size[0]} × {image.size[1]} pixels: the test transform would resize it to "
            f"{width} × {height} = {width * height:,}, over the limit of {limit:,} "
            "(data.max_image_pixels, at least PIL's default)"
        )
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    return np.array(TF.center_crop(image, [size, size]), dtype=np.uint8)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size): the short side becomes `size`."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] (any device) → CLIP-normalised float32 [B, 3, S, S]."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_view(
    path: str,
    size: int,
    rng: Optional[np.random.Generator] = None,
    crop_scale_min: float = CROP_SCALE[0],
    options: DecodeOptions = DecodeOptions(),
) -> torch.Tensor:
    """One image as model input [3, size, size]: a random train view (when `rng` is given) or the
    test transform."""
    image = read_image(path, options)
    if rng is None:
        pixels = render_test(image, size, options.max_pixels)
    else:
        pixels = render_view(
            image, sample_view(*image.size, rng, scale=(crop_scale_min, CROP_SCALE[1])), size
        )
    return to_model_input(torch.from_numpy(pixels)[None])[0]


def view_rng(seed: int, image_id: str, slot: int) -> np.random.Generator:
    """The generator of `image_id`'s view in view slot `slot` of a run seeded `seed`: independent of
    the batch the image lands in, of the task and of the machine."""
    key = int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, slot, key])


def decode_views(
    batch: dict,
    size: int,
    mode: str = "train",
    seed: Optional[int] = None,
    slot: int = 0,
    crop_scale_min: float = CROP_SCALE[0],
    options: DecodeOptions = DecodeOptions(),
    mixup: Mixup = Mixup(),
) -> tuple[dict, list]:
    """Decode a batch {"id": [B] str, ("bytes": [B] bytes)} and render one view per readable image
    (train crops cover a fraction `crop_scale_min` … 1 of the image area; the authors' 0.08). With a
    `seed`, each train view is drawn by `view_rng(seed, id, slot)`; without, from fresh entropy.
    With `mixup` on (`data.mixup_alpha`), a train view may blend in a partner image, read by id.

    Returns (rows, bad): rows {"id", "image": uint8 [b, S, S, 3]} plus, in train / heldout mode,
    the view columns `VIEW_COLUMNS` (and, mixup on in train mode, `MIX_COLUMNS`); bad = [(id,
    reason), …] for unreadable files (b ≤ B).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    fresh = np.random.default_rng() if seed is None else None
    ids = [str(i) for i in batch["id"]]
    blobs = batch.get("bytes")
    partner = PartnerImages(options)
    images, views, keep, bad = [], [], [], []
    for i, ident in enumerate(ids):
        try:
            image = read_image(blobs[i] if blobs is not None else ident, options)
            pixels = render_test(image, size, options.max_pixels) if mode == "test" else None
        except Exception as exc:  # any unreadable file: PIL errors, truncation, OSError, a vanished file
            bad.append((ident, f"{type(exc).__name__}: {exc}"))
            continue
        if pixels is not None:
            images.append(pixels)
        else:
            rng = fresh if seed is None else view_rng(seed, ident, slot)
            if mode == "train":
                view = draw_view(image, ident, rng, crop_scale_min, mixup, partner)
            else:
                view = full_view(*image.size)
            images.append(render(image, view, size, partner))
            views.append(view)
        keep.append(i)
    rows = {
        "id": np.asarray([ids[i] for i in keep], dtype=object),
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
    }
    if mode != "test":
        rows.update(
            {
                column: np.asarray([getattr(v, column[5:]) for v in views], dtype)
                for column, dtype in zip(VIEW_COLUMNS, (np.int32,) * 4 + (bool,))
            }
        )
    if mode == "train" and mixup.on:
        rows.update(mix_columns(views))
    return rows, bad


class PartnerImages:
    """Mixup partners by id, each read once per batch (`read_image`)."""

    def __init__(self, options: DecodeOptions):
        self.options, self.images = options, {}

    def __call__(self, ident: str) -> Image.Image:
        if ident not in self.images:
            self.images[ident] = read_image(ident, self.options)
        return self.images[ident]


def decode_recorded(batch: dict, size: int, options: DecodeOptions = DecodeOptions()) -> tuple[dict, list]:
    """Re-render recorded views: a batch {"id", the view columns (and mix columns), "teacher_feature"
    (and a teacher ensemble's "teacher_feature_i")} → rows {"id", "image": uint8 [b, S, S, 3], those
    features} and the unreadable ids (as `decode_views`; a mixed view's unreadable partner too)."""
    ids = [str(i) for i in batch["id"]]
    columns = [c for c in (*VIEW_COLUMNS, *MIX_COLUMNS) if c in batch]
    partner = PartnerImages(options)
    images, keep, bad = [], [], []
    for i, ident in enumerate(ids):
        try:
            image = read_image(ident, options)
            images.append(render(image, row_view({c: batch[c][i] for c in columns}), size, partner))
        except Exception as exc:  # any unreadable file (its own or its mixup partner), as in decode_views
            bad.append((ident, f"{type(exc).__name__}: {exc}"))
            continue
        keep.append(i)
    rows = {
        "id": np.asarray([ids[i] for i in keep], dtype=object),
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
    }
    for column in (c for c in batch if c.startswith("teacher_feature")):
        features = np.asarray(batch[column])
        rows[column] = features[keep] if keep else features[:0]
    return rows, bad


def row_view(row: dict) -> View:
    """The `View` stored in a decoded row or cache row, its mixup partner included (to replay it)."""
    view = View(
        int(row["view_top"]),
        int(row["view_left"]),
        int(row["view_height"]),
        int(row["view_width"]),
        bool(row["view_flip"]),
    )
    return row_mix(view, row)
