"""Readers for the 11 base-to-novel benchmarks and the 4 domain-generalisation sets.

`load_dataset(name, root)` reads one dataset from the layout of the authors' DATASETS.md (the
table "On-disk layouts" in docs/protocol.md), everything under one data root, into a `DatasetSplits`:
image paths + integer labels + class names, nothing decoded.

Design decisions
- One registry (`BENCHMARKS`) holds each dataset's folder, image folder and split/class source;
  the readers take those as arguments, so a layout fact lives in one place. Names are matched
  case-insensitively ignoring "_", "-" and spaces, against the canonical name, the folder name
  and a few aliases ("oxford_pets", "imagenet-a", "flowers" …).
- Split-JSON datasets (CoOp's `split_zhou_*.json`, also written by the toy world): items are
  `[relative_path, label, classname]`; class names come from the items, by label. Labels must be
  `0 … N-1` without gaps over all splits, and each label must have exactly one name. `val` is
  read when present; the protocols use only train and test.
- FGVCAircraft: `variants.txt` gives the class order; `images_variant_{train,val,test}.txt`
  lines are `<id> <variant name…>` (names contain spaces), the image is `images/<id>.jpg`.
- ImageNet and its DG variants: see `imagenet_family`. The DG sets are test-only (`train=()`).
- Class names keep the source's text ("_" included); turning them into prompt text is the
  text side's job.
- Image files named by a split file are checked per `check_files` ("sample" by default; see
  `layout`). Folder-listed datasets (the ImageNet family) need no check: files come from listing.
- Base/novel: `base_novel_split` lives in `promptkd_ray.data.splits` and is re-exported here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from promptkd_ray.data import imagenet_family as inet
from promptkd_ray.data.layout import (
    CHECK_FILES_MODES,
    DatasetLayoutError,
    DatasetSplits,
    Item,
    check_item_files,
    preview,
    read_json,
    require_dir,
    require_file,
)
from promptkd_ray.data.splits import base_novel_split  # re-exported: base = first ⌈N/2⌉ labels
from promptkd_ray.storage import Storage, join

__all__ = [
    "BASE_TO_NOVEL_DATASETS",
    "BENCHMARKS",
    "DG_DATASETS",
    "BenchmarkSpec",
    "DatasetLayoutError",
    "DatasetSplits",
    "Item",
    "base_novel_split",
    "benchmark_spec",
    "canonical_name",
    "classnames",
    "load_dataset",
    "load_split_json_dataset",
]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")  # val is optional in every layout


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str  # canonical name, as in the papers' tables
    folder: str  # dataset folder under the data root
    image_folder: str  # image folder inside `folder`; "" = `folder` itself
    source: str  # split JSON, FGVC's variants.txt, or the ImageNet family's classnames.txt
    kind: str  # reader: split_json | fgvc | imagenet | imagenet_v2 | imagenet_sketch | imagenet_subset
    aliases: tuple[str, ...] = ()  # extra accepted names (matched like the canonical name)


_SPECS = (
    BenchmarkSpec("ImageNet", "imagenet", "images", "classnames.txt", "imagenet"),
    BenchmarkSpec(
        "Caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        "split_json",
        ("caltech",),
    ),
    BenchmarkSpec(
        "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "split_json", ("pets",)
    ),
    BenchmarkSpec(
        "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "split_json", ("cars",)
    ),
    BenchmarkSpec(
        "Flowers102",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        "split_json",
        ("OxfordFlowers", "flowers"),
    ),
    BenchmarkSpec("Food101", "food-101", "images", "split_zhou_Food101.json", "split_json", ("food",)),
    BenchmarkSpec("FGVCAircraft", "fgvc_aircraft", "images", "variants.txt", "fgvc", ("aircraft", "fgvc")),
    BenchmarkSpec("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "split_json", ("sun",)),
    BenchmarkSpec(
        "DTD",
        "dtd",
        "images",
        "split_zhou_DescribableTextures.json",
        "split_json",
        ("DescribableTextures", "textures"),
    ),
    BenchmarkSpec("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "split_json"),
    BenchmarkSpec("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "split_json", ("ucf",)),
    BenchmarkSpec(
        "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "classnames.txt", "imagenet_v2"
    ),
    BenchmarkSpec("ImageNetSketch", "imagenet-sketch", "images", "classnames.txt", "imagenet_sketch"),
    BenchmarkSpec("ImageNetA", "imagenet-adversarial", "imagenet-a", "classnames.txt", "imagenet_subset"),
    BenchmarkSpec("ImageNetR", "imagenet-rendition", "imagenet-r", "classnames.txt", "imagenet_subset"),
)
BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}
BASE_TO_NOVEL_DATASETS = tuple(spec.name for spec in _SPECS[:11])
DG_DATASETS = tuple(spec.name for spec in _SPECS[11:])

# kind -> (reader, class-name reader) for the folder-listed ImageNet family.
_FolderReader = Callable[[Storage, str, str, str, str], object]
_IMAGENET_KINDS: dict[str, tuple[_FolderReader, _FolderReader]] = {
    "imagenet": (inet.read_imagenet, inet.imagenet_classes),
    "imagenet_v2": (inet.read_imagenet_v2, inet.imagenet_v2_classes),
    "imagenet_sketch": (inet.read_imagenet_sketch, inet.imagenet_sketch_classes),
    "imagenet_subset": (inet.read_imagenet_subset, inet.imagenet_subset_classes),
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def canonical_name(name: str) -> str:
    """The registry name for `name`, e.g. "oxford_pets" → "OxfordPets"."""
    key = _normalise(str(name))
    for spec in _SPECS:
        if key in {_normalise(n) for n in (spec.name, spec.folder, *spec.aliases)}:
            return spec.name
    raise ValueError(f"Expected one of the datasets {', '.join(BENCHMARKS)}, got {name!r}.")


def benchmark_spec(name: str) -> BenchmarkSpec:
    return BENCHMARKS[canonical_name(name)]


def load_dataset(name: str, root: str | Path, check_files: str = "sample") -> DatasetSplits:
    """Read benchmark `name` from the data root `root` (a folder or a URI).

    check_files: "sample" | "all" | "none" — how many image files named by a split file are
    checked to exist (see `promptkd_ray.data.layout`).
    """
    if check_files not in CHECK_FILES_MODES:
        raise ValueError(f"check_files must be one of {CHECK_FILES_MODES}, got {check_files!r}.")
    spec = benchmark_spec(name)
    storage = Storage(root)
    if spec.kind == "split_json":
        splits = _read_split_json(
            storage, spec.folder, spec.image_folder, spec.source, spec.name, check_files
        )
    elif spec.kind == "fgvc":
        splits = _read_fgvc_aircraft(storage, spec, check_files)
    else:
        reader = _IMAGENET_KINDS[spec.kind][0]
        splits = reader(storage, spec.folder, spec.image_folder, spec.source, spec.name)
    log.info("%s (from %s)", splits.summary(), storage.path(spec.folder))
    return splits


def classnames(name: str, root: str | Path) -> tuple[str, ...]:
    """Class names of benchmark `name` in label order, listing no images where possible."""
    spec = benchmark_spec(name)
    if spec.kind in _IMAGENET_KINDS:
        names_of = _IMAGENET_KINDS[spec.kind][1]
        return names_of(Storage(root), spec.folder, spec.image_folder, spec.source, spec.name)
    return load_dataset(name, root, check_files="none").classnames


def load_split_json_dataset(
    root: str | Path,
    dataset_folder: str,
    image_folder: str,
    split_file: str,
    name: str,
    check_files: str = "sample",
) -> DatasetSplits:
    """Read any dataset in the split-JSON layout: `root/dataset_folder/split_file` lists
    `[path relative to root/dataset_folder/image_folder, label, classname]` per split."""
    if check_files not in CHECK_FILES_MODES:
        raise ValueError(f"check_files must be one of {CHECK_FILES_MODES}, got {check_files!r}.")
    return _read_split_json(Storage(root), dataset_folder, image_folder, split_file, name, check_files)


def _read_split_json(
    storage: Storage,
    folder: str,
    image_folder: str,
    split_file: str,
    dataset: str,
    check_files: str,
) -> DatasetSplits:
    require_dir(storage, folder, "the dataset folder", dataset)
    split_rel = join(folder, split_file)
    require_file(storage, split_rel, "the split file", dataset)
    image_dir = join(folder, image_folder)
    require_dir(storage, image_dir, "the image folder", dataset)
    content = read_json(storage, split_rel, dataset)
    if not isinstance(content, dict) or not {"train", "test"} <= set(content):
        found = f"keys {preview(sorted(content))}" if isinstance(content, dict) else "no object"
        raise DatasetLayoutError(
            f"{dataset}: expected a JSON object with 'train' and 'test' lists in "
            f"{storage.path(split_rel)}, found {found}."
        )
    source = storage.path(split_rel)
    entries = {
        split: _parse_entries(content[split], split, source, dataset)
        for split in SPLIT_NAMES
        if split in content
    }
    names = _names_by_label(
        [(label, name) for rows in entries.values() for _, label, name in rows], source, dataset
    )
    splits: dict[str, tuple[Item, ...]] = {}
    for split, rows in entries.items():
        rels = [join(image_dir, path) for path, _, _ in rows]
        check_item_files(storage, rels, check_files, dataset, f"{split_file} ({split})")
        splits[split] = tuple(Item(storage.path(rel), label) for rel, (_, label, _) in zip(rels, rows))
    return DatasetSplits(dataset, names, **splits)


def _parse_entries(rows: object, split: str, source: str, dataset: str) -> list[tuple[str, int, str]]:
    if not isinstance(rows, list):
        raise DatasetLayoutError(
            f"{dataset}: expected '{split}' in {source} to be a list of "
            f"[relative_path, label, classname], found a {type(rows).__name__}."
        )
    parsed = []
    for index, row in enumerate(rows):
        ok = (
            isinstance(row, (list, tuple))
            and len(row) == 3
            and isinstance(row[0], str)
            and isinstance(row[1], int)
            and not isinstance(row[1], bool)
            and isinstance(row[2], str)
            and row[1] >= 0
        )
        if not ok:
            raise DatasetLayoutError(
                f"{dataset}: expected every '{split}' entry of {source} to be "
                f"[relative_path, label >= 0, classname], found {str(row)[:80]} at index {index}."
            )
        parsed.append((row[0], row[1], row[2]))
    return parsed


def _names_by_label(pairs: list[tuple[int, str]], source: str, dataset: str) -> tuple[str, ...]:
    """Class names in label order; labels must be 0 … N-1 and each must have one name."""
    names: dict[int, str] = {}
    for label, name in pairs:
        if names.setdefault(label, name) != name:
            raise DatasetLayoutError(
                f"{dataset}: expected one class name per label in {source}, found both "
                f"{names[label]!r} and {name!r} for label {label}."
            )
    if not names:
        raise DatasetLayoutError(f"{dataset}: expected labelled items in {source}, found none.")
    count = max(names) + 1
    gaps = [str(label) for label in range(count) if label not in names]
    if gaps:
        raise DatasetLayoutError(
            f"{dataset}: expected labels 0 … {count - 1} without gaps in {source}, found no "
            f"item with label {preview(gaps)}."
        )
    ordered = tuple(names[label] for label in range(count))
    if len(set(ordered)) != count:
        log.warning("%s: several labels share a class name in %s.", dataset, source)
    return ordered


def _read_fgvc_aircraft(storage: Storage, spec: BenchmarkSpec, check_files: str) -> DatasetSplits:
    dataset = spec.name
    require_dir(storage, spec.folder, "the dataset folder", dataset)
    variants_rel = join(spec.folder, spec.source)
    require_file(storage, variants_rel, "the class list", dataset)
    variants = [v.strip() for v in storage.read_text(variants_rel).splitlines() if v.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    if len(label_of) != len(variants) or not variants:
        raise DatasetLayoutError(
            f"{dataset}: expected distinct variant names, one per line, in "
            f"{storage.path(variants_rel)}, found {len(variants)} lines with "
            f"{len(label_of)} distinct names."
        )
    image_dir = join(spec.folder, spec.image_folder)
    require_dir(storage, image_dir, "the image folder", dataset)
    splits: dict[str, tuple[Item, ...]] = {}
    for split in SPLIT_NAMES:
        list_rel = join(spec.folder, f"images_variant_{split}.txt")
        if split == "val" and not storage.is_file(list_rel):
            continue
        require_file(storage, list_rel, f"the {split} list", dataset)
        rows = _parse_variant_lines(storage, list_rel, label_of, dataset)
        rels = [join(image_dir, f"{image_id}.jpg") for image_id, _ in rows]
        check_item_files(storage, rels, check_files, dataset, list_rel.rsplit("/", 1)[-1])
        splits[split] = tuple(Item(storage.path(rel), label) for rel, (_, label) in zip(rels, rows))
    return DatasetSplits(dataset, tuple(variants), **splits)


def _parse_variant_lines(
    storage: Storage, rel: str, label_of: dict[str, int], dataset: str
) -> list[tuple[str, int]]:
    rows = []
    for lineno, line in enumerate(storage.read_text(rel).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        variant = parts[1].strip() if len(parts) == 2 else ""
        if variant not in label_of:
            raise DatasetLayoutError(
                f"{dataset}: expected lines '<image id> <variant from variants.txt>' in "
                f"{storage.path(rel)}, found {line.strip()!r} on line {lineno}."
            )
        rows.append((parts[0], label_of[variant]))
    return rows
