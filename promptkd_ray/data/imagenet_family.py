"""Readers for ImageNet and its domain-generalisation variants (-V2, -Sketch, -A, -R).

Layouts are the authors' DATASETS.md (see docs/protocol.md, "On-disk layouts"); every set has a
`classnames.txt` with lines `n01440764 tench` (wnid, a space, the class name, which may contain
spaces). How each set turns folders into labels:

- ImageNet: labels = sorted wnid folders of `images/train`; `images/val` must hold the same
  folders and is both the test and the val split. Every folder needs a `classnames.txt` line and
  every line a folder.
- ImageNet-V2: folder `k` holds class `k`, the k-th line of `classnames.txt`; folders must be
  exactly `0 … N-1`. A `classnames.txt` that is not sorted by wnid would make these labels
  disagree with ImageNet's, so it is logged as a warning.
- ImageNet-Sketch: labels = sorted wnid folders, which must be exactly the wnids of
  `classnames.txt` (all classes), so labels match ImageNet's.
- ImageNet-A / -R: 200-class subsets; labels = sorted *present* wnid folders (files such as
  README.txt are ignored), names from the full 1000-line `classnames.txt`.

The four DG sets are evaluation-only: their items are the test split and `train` is empty.
`*_classes` functions return class names without listing any image, for `classnames()`.
"""

from __future__ import annotations

import logging

from promptkd_ray.data.layout import (
    DatasetLayoutError,
    DatasetSplits,
    class_folder_items,
    preview,
    require_dir,
    require_file,
)
from promptkd_ray.storage import Storage, join

log = logging.getLogger(__name__)


def read_classnames_txt(storage: Storage, rel: str, dataset: str) -> dict[str, str]:
    """`classnames.txt` as an ordered {wnid: class name} dict."""
    require_file(storage, rel, "the class-name file", dataset)
    names: dict[str, str] = {}
    for lineno, line in enumerate(storage.read_text(rel).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetLayoutError(
                f"{dataset}: expected lines like 'n01440764 tench' in {storage.path(rel)}, "
                f"found {line.strip()!r} on line {lineno}."
            )
        wnid, name = parts
        if wnid in names:
            raise DatasetLayoutError(
                f"{dataset}: expected each wnid once in {storage.path(rel)}, found {wnid} "
                f"again on line {lineno}."
            )
        names[wnid] = name
    if not names:
        raise DatasetLayoutError(
            f"{dataset}: expected class names in {storage.path(rel)}, found an empty file."
        )
    return names


def _wnid_folders(
    storage: Storage, image_dir: str, names: dict[str, str], dataset: str, all_classes: bool
) -> tuple[str, ...]:
    """Sorted class folders of `image_dir`, checked against `classnames.txt`."""
    require_dir(storage, image_dir, "the image folder", dataset)
    folders = storage.list_dir(image_dir)[0]
    if not folders:
        raise DatasetLayoutError(
            f"{dataset}: expected one folder per class (wnid) in {storage.path(image_dir)}, found none."
        )
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DatasetLayoutError(
            f"{dataset}: expected every class folder of {storage.path(image_dir)} to have a line "
            f"in classnames.txt, found no line for {preview(unknown)}."
        )
    absent = [w for w in names if w not in set(folders)] if all_classes else []
    if absent:
        raise DatasetLayoutError(
            f"{dataset}: expected a class folder in {storage.path(image_dir)} for every wnid of "
            f"classnames.txt, found none for {preview(absent)}."
        )
    return folders


def imagenet_classes(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> tuple[str, ...]:
    names = read_classnames_txt(storage, join(folder, classnames_file), dataset)
    train_dir = join(folder, image_folder, "train")
    return tuple(names[w] for w in _wnid_folders(storage, train_dir, names, dataset, True))


def read_imagenet(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> DatasetSplits:
    require_dir(storage, folder, "the dataset folder", dataset)
    names = read_classnames_txt(storage, join(folder, classnames_file), dataset)
    train_dir = join(folder, image_folder, "train")
    val_dir = join(folder, image_folder, "val")
    wnids = _wnid_folders(storage, train_dir, names, dataset, all_classes=True)
    require_dir(storage, val_dir, "the validation image folder", dataset)
    val_wnids = storage.list_dir(val_dir)[0]
    if val_wnids != wnids:
        differ = sorted(set(wnids).symmetric_difference(val_wnids))
        raise DatasetLayoutError(
            f"{dataset}: expected {storage.path(val_dir)} to hold the same {len(wnids)} wnid "
            f"folders as {storage.path(train_dir)}, found {len(val_wnids)} with "
            f"{preview(differ)} in only one of them."
        )
    train = class_folder_items(storage, train_dir, wnids, dataset)
    test = class_folder_items(storage, val_dir, wnids, dataset)
    classnames = tuple(names[w] for w in wnids)
    return DatasetSplits(dataset, classnames, train=train, test=test, val=test)


def _v2_names(storage: Storage, folder: str, classnames_file: str, dataset: str) -> dict[str, str]:
    names = read_classnames_txt(storage, join(folder, classnames_file), dataset)
    if list(names) != sorted(names):
        log.warning(
            "%s: classnames.txt is not sorted by wnid, so its labels (line order) differ from "
            "ImageNet's (sorted wnid folders).",
            dataset,
        )
    return names


def imagenet_v2_classes(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> tuple[str, ...]:
    return tuple(_v2_names(storage, folder, classnames_file, dataset).values())


def read_imagenet_v2(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> DatasetSplits:
    require_dir(storage, folder, "the dataset folder", dataset)
    names = _v2_names(storage, folder, classnames_file, dataset)
    image_dir = join(folder, image_folder)
    require_dir(storage, image_dir, "the image folder", dataset)
    expected = [str(k) for k in range(len(names))]
    present = set(storage.list_dir(image_dir)[0])
    missing = [k for k in expected if k not in present]
    extra = sorted(present.difference(expected))
    if missing or extra:
        found = f"missing {preview(missing)}" if missing else f"unexpected {preview(extra)}"
        raise DatasetLayoutError(
            f"{dataset}: expected class folders 0 … {len(names) - 1} in {storage.path(image_dir)} "
            f"(one per line of classnames.txt), found {len(present)} folders, {found}."
        )
    test = class_folder_items(storage, image_dir, expected, dataset)
    return DatasetSplits(dataset, tuple(names.values()), train=(), test=test)


def _folder_classes(
    storage: Storage,
    folder: str,
    image_folder: str,
    classnames_file: str,
    dataset: str,
    all_classes: bool,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    require_dir(storage, folder, "the dataset folder", dataset)
    names = read_classnames_txt(storage, join(folder, classnames_file), dataset)
    wnids = _wnid_folders(storage, join(folder, image_folder), names, dataset, all_classes)
    return wnids, tuple(names[w] for w in wnids)


def imagenet_sketch_classes(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> tuple[str, ...]:
    return _folder_classes(storage, folder, image_folder, classnames_file, dataset, True)[1]


def imagenet_subset_classes(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> tuple[str, ...]:
    return _folder_classes(storage, folder, image_folder, classnames_file, dataset, False)[1]


def _read_folder_classes(
    storage: Storage,
    folder: str,
    image_folder: str,
    classnames_file: str,
    dataset: str,
    all_classes: bool,
) -> DatasetSplits:
    wnids, classnames = _folder_classes(storage, folder, image_folder, classnames_file, dataset, all_classes)
    test = class_folder_items(storage, join(folder, image_folder), wnids, dataset)
    return DatasetSplits(dataset, classnames, train=(), test=test)


def read_imagenet_sketch(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> DatasetSplits:
    """ImageNet-Sketch: all classes of classnames.txt, each with its wnid folder."""
    return _read_folder_classes(storage, folder, image_folder, classnames_file, dataset, True)


def read_imagenet_subset(
    storage: Storage, folder: str, image_folder: str, classnames_file: str, dataset: str
) -> DatasetSplits:
    """ImageNet-A / -R: the classes whose wnid folder is present, in sorted wnid order."""
    return _read_folder_classes(storage, folder, image_folder, classnames_file, dataset, False)
