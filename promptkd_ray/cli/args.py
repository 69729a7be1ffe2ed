"""Command-line pieces several commands share: naming a dataset (`--dataset/--root`, `--split-json`
or `--pack`) and opening it; the decoder's rules (`--max-image-pixels`, `--exif-orientation`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import UsageError


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", nargs="+", help="benchmark name(s) (DG: several); or a name for --split-json")
    p.add_argument("--root", help="data root folder or URI holding the benchmark folders")
    p.add_argument("--split-json", help="a dataset in the split-JSON layout: ROOT/FOLDER/split_file.json")
    p.add_argument(
        "--image-folder", default="images", help="image folder beside --split-json (default: images)"
    )
    p.add_argument(
        "--pack", help="a pack folder or URI written by `promptkd-ray pack` (images read from its shards)"
    )


def open_datasets(args) -> list:
    """The DatasetSplits the arguments name (one per --dataset, or the --split-json or --pack one),
    opened as a job's images section is (`data.sources.open_splits`)."""
    from ..config.sections import ImagesConfig
    from ..data.sources import open_splits

    if args.pack:
        return [open_splits(ImagesConfig(source="packed", root=args.pack))]
    if args.split_json:
        split = Path(args.split_json)
        images = ImagesConfig(
            source="split_json",
            root=str(split.parent.parent),
            dataset=split.parent.name,
            image_folder=args.image_folder,
            split_file=split.name,
        )
        splits = open_splits(images)
        return [dataclasses.replace(splits, name=args.dataset[0]) if args.dataset else splits]
    if not args.dataset or not args.root:
        raise UsageError("Give --dataset NAME and --root DATA_ROOT, --split-json PATH or --pack PACK.")
    return [
        open_splits(ImagesConfig(source="benchmark", root=args.root, dataset=name)) for name in args.dataset
    ]


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    """The decoder's rules, as a training job's `data` section sets them."""
    from ..data.limits import DEFAULT_MAX_IMAGE_PIXELS, EXIF_ORIENTATIONS

    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="an image declaring more pixels (width × height) is refused undecoded, i.e. unreadable",
    )
    p.add_argument(
        "--exif-orientation",
        choices=EXIF_ORIENTATIONS,
        default="ignore",
        help="ignore EXIF rotation (the authors) or apply it before the test transform",
    )


def decode_options(args):
    """The DecodeOptions the arguments of `add_decode_arguments` give (a pixel limit out of range is
    refused in one sentence; argparse has checked the EXIF rule)."""
    from ..data.decode import DecodeOptions
    from ..data.limits import PIL_REFUSAL_PIXELS

    try:
        return DecodeOptions(args.max_image_pixels, args.exif_orientation)
    except ValueError:  # its own range check: said with the flag's name
        raise UsageError(
            f"--max-image-pixels must be in 1 … {PIL_REFUSAL_PIXELS} (PIL refuses larger images "
            f"itself), got {args.max_image_pixels}."
        ) from None
