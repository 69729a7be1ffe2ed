"""Named toy domains, written to disk in the layout of the real CoOp benchmarks.

Design decisions:
- A domain is a set of (colour, shape) classes rendered in one style; its class names are
  "<colour> <shape>", sorted alphabetically and labelled 0…N-1 (as CoOp's split files do for
  folder-named classes), so base = the first ⌈N/2⌉ names and novel = the rest (docs/protocol.md).
- Layout (docs/protocol.md, "On-disk layouts"): `<root>/<folder>/<image_folder>/<class_dir>/<split>_<i>.png`
  and `<root>/<folder>/split_zhou_<Name>.json` = `{"train"|"val"|"test": [[path, label, classname]]}`,
  paths relative to the image folder. The real split-JSON readers therefore read toy domains.
- Images are 32×32 RGB PNGs, the toy models' input size (the test transform's resize is a no-op).
- A domain is written into a temporary folder and renamed into place, so an interrupted build
  never leaves a half-written domain behind; images come from a Generator seeded by
  (seed, domain name, split), so a seed fixes every pixel.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .concepts import class_name, parse_class_name
from .render import IMAGE_SIZE, render_image
from .styles import STYLES

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DomainSpec:
    """A toy dataset: which classes, in which style, how many images per class and split."""

    name: str  # CoOp-style dataset name; the split file is split_zhou_<name>.json
    folder: str  # dataset folder under the data root
    style: str  # rendering style of every image (see styles.py)
    colours: tuple  # class colours
    shapes: tuple  # class shapes; classes = colours × shapes
    train_per_class: int = 150  # unlabeled images for distillation
    val_per_class: int = 10
    test_per_class: int = 50
    image_folder: str = "images"  # image folder inside the dataset folder

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"Domain {self.name}: unknown style {self.style!r}; known: {sorted(STYLES)}.")
        for c in self.colours:
            for s in self.shapes:
                class_name(c, s)  # validates

    @property
    def classnames(self) -> list[str]:
        """Class names in label order (alphabetical)."""
        return sorted(class_name(c, s) for c in self.colours for s in self.shapes)

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.name}.json"

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]

    def scaled(self, factor: float) -> "DomainSpec":
        """The same domain with `factor` × as many images per class (at least 2 per split)."""
        return replace(
            self,
            train_per_class=max(2, round(self.train_per_class * factor)),
            val_per_class=max(2, round(self.val_per_class * factor)),
            test_per_class=max(2, round(self.test_per_class * factor)),
        )

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "folder": self.folder,
            "style": self.style,
            "colours": list(self.colours),
            "shapes": list(self.shapes),
            "train_per_class": self.train_per_class,
            "val_per_class": self.val_per_class,
            "test_per_class": self.test_per_class,
            "image_folder": self.image_folder,
        }


# The default domain: doodles on lined notebook paper, a style no pretraining corpus contains.
DOODLES = DomainSpec(
    name="ToyDoodles",
    folder="toy_doodles",
    style="doodle",
    colours=("red", "orange", "green", "blue", "purple"),
    shapes=("circle", "triangle", "star", "heart", "cross", "moon"),
)
# A second domain: neon signs (a style of the teacher's web), other colours and shapes.
NEON = DomainSpec(
    name="ToyNeon",
    folder="toy_neon",
    style="neon",
    colours=("yellow", "cyan", "pink", "red"),
    shapes=("square", "diamond", "arrow", "ring", "star", "hexagon"),
    train_per_class=120,
    val_per_class=10,
    test_per_class=40,
)
DOMAINS: dict[str, DomainSpec] = {"doodles": DOODLES, "neon": NEON}
DEFAULT_DOMAIN = "doodles"


def class_dir(classname: str) -> str:
    """Folder name of a class: spaces → underscores ("red star" → "red_star")."""
    return classname.replace(" ", "_")


def _split_rng(spec: DomainSpec, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(spec.name.encode()), SPLITS.index(split)])


def write_domain(spec: DomainSpec, root: "str | os.PathLike", seed: int = 0, progress: bool = True) -> Path:
    """Render `spec` under `root/spec.folder` (replacing nothing that exists); → the split file."""
    from tqdm.auto import tqdm

    root = Path(root)
    final = root / spec.folder
    if (final / spec.split_file).is_file():
        return final / spec.split_file
    tmp = root / f".{spec.folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    image_root = tmp / spec.image_folder
    names = spec.classnames
    for name in names:
        (image_root / class_dir(name)).mkdir(parents=True, exist_ok=True)
    total = len(names) * sum(spec.per_class(s) for s in SPLITS)
    split_items: dict[str, list] = {}
    with tqdm(total=total, desc=f"write {spec.name}", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            rng = _split_rng(spec, seed, split)
            items = []
            for label, name in enumerate(names):
                colour, shape = parse_class_name(name)
                for i in range(spec.per_class(split)):
                    rel = f"{class_dir(name)}/{split}_{i:04d}.png"
                    Image.fromarray(render_image(colour, shape, spec.style, rng, IMAGE_SIZE)).save(
                        image_root / rel
                    )
                    items.append([rel, label, name])
                bar.update(spec.per_class(split))
            split_items[split] = items
    (tmp / spec.split_file).write_text(json.dumps(split_items))
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same domain first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / spec.split_file).is_file():
            raise
    log.info("wrote domain %s (%d classes, %d images) to %s", spec.name, len(names), total, final)
    return final / spec.split_file
