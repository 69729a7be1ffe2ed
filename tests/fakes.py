"""Miniature fakes of every benchmark layout, for tests (readers, eval, pipeline).

    folder = make_fake_dataset("OxfordPets", tmp_path)           # tmp_path/oxford_pets/...
    splits = load_dataset("OxfordPets", tmp_path)
    expected = fake_expectations("OxfordPets")                   # class names + split sizes

The layouts are written from the authors' DATASETS.md (docs/protocol.md), independently of the
reader's registry, so a wrong folder name in the registry fails a test. Each fake has a few
tiny valid images (8×8, format from the extension) per class and is built to catch ordering
mistakes: split-JSON entries are written in shuffled order; Caltech101's label order is not
alphabetical by class name (as in CoOp's split); FGVCAircraft's variants.txt is not sorted;
ImageNet's classnames.txt is written in reverse wnid order (labels must follow sorted folders);
ImageNet-A/-R list more wnids than there are folders and hold a README.txt.

Per class: train `per_class` images, val 1, test `per_class + 1` (so a train/test swap shows);
ImageNet's val is its test; the DG sets have `per_class` test images only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

FAKE_DATASETS = (
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "Flowers102",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DTD",
    "EuroSAT",
    "UCF101",
    "ImageNetV2",
    "ImageNetSketch",
    "ImageNetA",
    "ImageNetR",
)

# (folder or key, class name) in label order; extended with generated classes when needed.
_CLASSES: dict[str, list[tuple[str, str]]] = {
    "Caltech101": [
        ("Faces", "face"),
        ("Leopards", "leopard"),
        ("Motorbikes", "motorbike"),
        ("accordion", "accordion"),
        ("airplanes", "airplane"),
    ],
    "OxfordPets": [
        ("Abyssinian", "abyssinian"),
        ("american_bulldog", "american_bulldog"),
        ("american_pit_bull_terrier", "american_pit_bull_terrier"),
        ("basset_hound", "basset_hound"),
        ("Bengal", "bengal"),
    ],
    "StanfordCars": [
        ("", "2000 AM General Hummer SUV"),
        ("", "2012 Acura RL Sedan"),
        ("", "2012 Acura TL Sedan"),
        ("", "2008 Acura TL Type-S"),
        ("", "2012 Acura TSX Sedan"),
    ],
    "Flowers102": [
        ("", "pink primrose"),
        ("", "hard-leaved pocket orchid"),
        ("", "canterbury bells"),
        ("", "sweet pea"),
        ("", "english marigold"),
    ],
    "Food101": [
        ("apple_pie", "apple_pie"),
        ("baby_back_ribs", "baby_back_ribs"),
        ("baklava", "baklava"),
        ("beef_carpaccio", "beef_carpaccio"),
        ("beef_tartare", "beef_tartare"),
    ],
    "SUN397": [
        ("a/abbey", "abbey"),
        ("a/airplane_cabin", "airplane_cabin"),
        ("a/apartment_building/outdoor", "apartment_building outdoor"),
        ("b/badlands", "badlands"),
        ("b/bakery/shop", "bakery shop"),
    ],
    "DTD": [
        ("banded", "banded"),
        ("blotchy", "blotchy"),
        ("braided", "braided"),
        ("bubbly", "bubbly"),
        ("bumpy", "bumpy"),
    ],
    "EuroSAT": [
        ("AnnualCrop", "Annual Crop Land"),
        ("Forest", "Forest"),
        ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
        ("Highway", "Highway or Road"),
        ("Industrial", "Industrial Buildings"),
    ],
    "UCF101": [
        ("Apply_Eye_Makeup", "Apply_Eye_Makeup"),
        ("Apply_Lipstick", "Apply_Lipstick"),
        ("Archery", "Archery"),
        ("Baby_Crawling", "Baby_Crawling"),
        ("Balance_Beam", "Balance_Beam"),
    ],
    "FGVCAircraft": [("", "707-320"), ("", "A300B4"), ("", "737-200"), ("", "Cessna 172"), ("", "DC-10")],
    "ImageNet": [
        ("n01440764", "tench"),
        ("n01443537", "goldfish"),
        ("n01484850", "great white shark"),
        ("n01491361", "tiger shark"),
        ("n01494475", "hammerhead shark"),
    ],
}
# dataset -> (folder, image folder, split file) for the split-JSON layouts.
_SPLIT_JSON = {
    "Caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "OxfordPets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "StanfordCars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "Flowers102": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "Food101": ("food-101", "images", "split_zhou_Food101.json"),
    "SUN397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "DTD": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "EuroSAT": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "UCF101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
_DG_FOLDERS = {
    "ImageNetV2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    "ImageNetSketch": ("imagenet-sketch", "images"),
    "ImageNetA": ("imagenet-adversarial", "imagenet-a"),
    "ImageNetR": ("imagenet-rendition", "imagenet-r"),
}


@dataclass(frozen=True)
class FakeExpectation:
    classnames: tuple[str, ...]  # in label order
    train: int  # number of items per split
    val: int
    test: int


def write_image(path: Path, seed: int = 0) -> Path:
    """A tiny valid image at `path`; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    color = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _table(name: str, classes: int) -> list[tuple[str, str]]:
    base = _CLASSES["ImageNet" if name in _DG_FOLDERS else name]
    extra = [
        (f"n9{i:07d}" if name.startswith("ImageNet") else f"extra_{i:03d}", f"extra class {i}")
        for i in range(len(base), classes)
    ]
    return (base + extra)[:classes]


def fake_expectations(name: str, classes: int = 4, per_class: int = 3) -> FakeExpectation:
    """What `load_dataset` must return for `make_fake_dataset(name, …, classes, per_class)`."""
    table = _table(name, 2 * classes if name in ("ImageNetA", "ImageNetR") else classes)
    if name in ("ImageNetA", "ImageNetR"):
        table = sorted(table[1::2])  # present folders only, sorted by wnid
    elif name.startswith("ImageNet"):
        table = sorted(table)
    names = tuple(classname for _, classname in table)
    if name in _DG_FOLDERS:
        return FakeExpectation(names, 0, 0, classes * per_class)
    if name == "ImageNet":
        return FakeExpectation(
            names, classes * per_class, classes * (per_class + 1), classes * (per_class + 1)
        )
    return FakeExpectation(names, classes * per_class, classes, classes * (per_class + 1))


def make_fake_dataset(name: str, root: str | Path, classes: int = 4, per_class: int = 3) -> Path:
    """Write a miniature `name` (a canonical name of FAKE_DATASETS) under `root`; returns its
    dataset folder (e.g. `root/oxford_pets`)."""
    if name not in FAKE_DATASETS:
        raise ValueError(f"Expected one of {FAKE_DATASETS}, got {name!r}.")
    if classes < 1 or per_class < 1:
        raise ValueError("Fakes take at least 1 class and 1 image per class.")
    root = Path(root)
    if name in _SPLIT_JSON:
        return _make_split_json(name, root, _table(name, classes), per_class)
    if name == "FGVCAircraft":
        return _make_fgvc(root, _table(name, classes), per_class)
    if name == "ImageNet":
        return _make_imagenet(root, _table(name, classes), per_class)
    return _make_dg(name, root, classes, per_class)


def make_all_fake_datasets(root: str | Path, classes: int = 4, per_class: int = 3) -> dict:
    """Every fake under one root: {name: dataset folder}."""
    return {name: make_fake_dataset(name, root, classes, per_class) for name in FAKE_DATASETS}


def _split_counts(per_class: int) -> dict[str, int]:
    return {"train": per_class, "val": 1, "test": per_class + 1}


def _json_path(name: str) -> Callable[[str, str, str, int, int], str]:
    """(folder key, class name, split, label, index) -> image path relative to the image folder."""
    paths = {
        "Caltech101": lambda key, _c, s, _l, i: f"{key}/image_{s}{i:04d}.jpg",
        "OxfordPets": lambda key, _c, s, _l, i: f"{key}_{s}{i}.jpg",
        "StanfordCars": lambda _k, _c, s, lab, i: (
            f"cars_{'test' if s == 'test' else 'train'}/{s}{lab:03d}{i:02d}.jpg"
        ),
        "Flowers102": lambda _k, _c, s, lab, i: f"image_{s}{lab:03d}{i:02d}.jpg",
        "Food101": lambda key, _c, s, _l, i: f"{key}/{s}{1000 + i}.jpg",
        "SUN397": lambda key, _c, s, _l, i: f"{key}/sun_{s}{i}.jpg",
        "DTD": lambda key, _c, s, _l, i: f"{key}/{key}_{s}{i:04d}.jpg",
        "EuroSAT": lambda key, _c, s, _l, i: f"{key}/{key}_{s}{i}.jpg",
        "UCF101": lambda key, _c, s, _l, i: f"{key}/v_{key.replace('_', '')}_g0{i}_{s}.jpg",
    }
    return paths[name]


def _make_split_json(name: str, root: Path, table, per_class: int) -> Path:
    folder_name, image_folder, split_file = _SPLIT_JSON[name]
    folder = root / folder_name
    image_dir = folder / image_folder if image_folder else folder
    path_of = _json_path(name)
    content: dict[str, list] = {}
    for split, count in _split_counts(per_class).items():
        rows = []
        for label, (key, classname) in enumerate(table):
            for i in range(count):
                rel = path_of(key, classname, split, label, i)
                write_image(image_dir / rel, seed=label * 100 + i)
                rows.append([rel, label, classname])
        random.Random(split).shuffle(rows)
        content[split] = rows
    (folder / split_file).write_text(json.dumps(content, indent=1))
    return folder


def _make_fgvc(root: Path, table, per_class: int) -> Path:
    folder = root / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{v}\n" for _, v in table))
    next_id = 1000000
    for split, count in _split_counts(per_class).items():
        lines = []
        for _, variant in table:
            for _ in range(count):
                write_image(folder / "images" / f"{next_id}.jpg", seed=next_id)
                lines.append(f"{next_id} {variant}\n")
                next_id += 1
        random.Random(split).shuffle(lines)
        (folder / f"images_variant_{split}.txt").write_text("".join(lines))
    return folder


def _write_classnames(path: Path, table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in table))


def _make_imagenet(root: Path, table, per_class: int) -> Path:
    folder = root / "imagenet"
    _write_classnames(folder / "classnames.txt", sorted(table, reverse=True))
    for wnid, _ in table:
        for i in range(per_class):
            write_image(folder / "images" / "train" / wnid / f"{wnid}_{i}.JPEG", seed=i)
        for i in range(per_class + 1):
            write_image(folder / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}{i}.JPEG")
    return folder


def _make_dg(name: str, root: Path, classes: int, per_class: int) -> Path:
    folder_name, image_folder = _DG_FOLDERS[name]
    folder = root / folder_name
    image_dir = folder / image_folder
    if name == "ImageNetV2":
        table = sorted(_table(name, classes))
        _write_classnames(folder / "classnames.txt", table)
        for k in range(classes):
            for i in range(per_class):
                write_image(image_dir / str(k) / f"{k:04d}{i}abc.jpeg", seed=k)
    elif name == "ImageNetSketch":
        table = _table(name, classes)
        _write_classnames(folder / "classnames.txt", sorted(table))
        for wnid, _ in table:
            for i in range(per_class):
                write_image(image_dir / wnid / f"sketch_{i}.JPEG", seed=i)
    else:  # ImageNet-A / -R: classnames.txt lists twice as many wnids as there are folders
        table = _table(name, 2 * classes)
        _write_classnames(folder / "classnames.txt", sorted(table))
        image_dir.mkdir(parents=True, exist_ok=True)
        (image_dir / "README.txt").write_text("fake README, not a class\n")
        for wnid, _ in table[1::2]:
            for i in range(per_class):
                write_image(image_dir / wnid / f"{i:04d}_{wnid}.jpg", seed=i)
    return folder


def make_image_folder(
    root: str | Path,
    classnames=("cat", "dog", "fishing_boat"),
    per_class: int = 3,
    nested: bool = True,
) -> Path:
    """A user's ImageFolder tree `root/<class>/…`; with `nested`, one image per class sits in a
    sub-folder, and a non-image file and a hidden file are added (both must be ignored)."""
    root = Path(root)
    for label, classname in enumerate(classnames):
        for i in range(per_class):
            sub = "extra/" if nested and i == 0 else ""
            write_image(root / classname / f"{sub}img_{i}.png", seed=label * 100 + i)
        if nested:
            (root / classname / "notes.txt").write_text("not an image\n")
            write_image(root / classname / ".hidden.png")
    return root


def make_parquet_images(
    path: str | Path, rows: int = 6, labels: Optional[str] = "int", struct: bool = False
) -> Path:
    """A Parquet file with an `image` column of PNG bytes (binary, or a HF-style struct
    {bytes, path}) and, unless `labels` is None, a `label` column ("int" or "str")."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = []
    for i in range(rows):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    image = pa.array(blobs, pa.binary())
    if struct:
        image = pa.StructArray.from_arrays(
            [image, pa.array([f"{i}.png" for i in range(rows)])], names=["bytes", "path"]
        )
    columns = {"image": image}
    if labels == "int":
        columns["label"] = pa.array([i % 3 for i in range(rows)], pa.int64())
    elif labels == "str":
        columns["label"] = pa.array([("zebra", "ant", "moth")[i % 3] for i in range(rows)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
