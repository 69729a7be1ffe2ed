"""`promptkd-ray pack --out PACK (--dataset NAME --root ROOT | --split-json PATH | --folder DIR | --toyworld
PROFILE)`: a dataset's images as Parquet shards with a manifest (`data/pack.py`).

Then Stage II reads them with `data.source: packed` and `data.root: PACK`, and `eval` with
`--pack PACK`. Shows a progress bar on a terminal and logs a line per shard with its rate;
re-running the same command finishes an interrupted pack.
"""

from __future__ import annotations

import argparse

from ..config.sections import TOYWORLD_PROFILES
from .args import add_dataset_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.pack import SPLITS
    from ..data.pack_writer import DEFAULT_SHARD_MB, JPEG_QUALITY

    p.add_argument(
        "--out", required=True, metavar="PACK", help="pack folder or URI (new, or a partial pack to finish)"
    )
    add_dataset_arguments(p)
    p.add_argument(
        "--folder", help="an ImageFolder tree (one sub-folder per class), packed as its train split"
    )
    p.add_argument(
        "--toyworld",
        choices=TOYWORLD_PROFILES,
        help="a toy-world domain (--dataset: the domain key)",
    )
    p.add_argument("--toyworld-seed", type=int, default=0, help="seed of the toy world")
    p.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to pack (default: all)"
    )
    p.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB, help="target shard size in MB")
    p.add_argument(
        "--shard-images", type=int, default=0, help="at most this many images per shard (0: no limit)"
    )
    p.add_argument(
        "--max-short-side",
        type=int,
        default=0,
        metavar="N",
        help=f"re-encode images whose short side exceeds N px as JPEG (quality {JPEG_QUALITY}); "
        "default 0: keep the original bytes (the authors crop from originals)",
    )
    p.add_argument("--workers", type=int, default=16, help="reader threads")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pack at --out")


def run(args) -> int:
    from ..data.pack_writer import PackOptions, write_pack
    from ..errors import UsageError

    if args.shard_mb <= 0 or args.shard_images < 0 or args.max_short_side < 0 or args.workers < 1:
        raise UsageError("--shard-mb must be > 0, --shard-images and --max-short-side ≥ 0, --workers ≥ 1.")
    if args.pack:
        raise UsageError("--pack names an existing pack; pack its source instead (or copy the folder).")
    splits, source = open_source(args)
    options = PackOptions(
        splits=tuple(args.splits),
        shard_mb=args.shard_mb,
        shard_images=args.shard_images,
        max_short_side=args.max_short_side,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    pack = write_pack(splits, args.out, source, options)
    parts = pack.manifest["splits"]
    total = sum(s["bytes"] for p in parts.values() for s in p["shards"])
    print(
        f"pack {pack.root}: {pack.name}, "
        + ", ".join(f"{k} {v['images']} images in {len(v['shards'])} shards" for k, v in parts.items())
        + f", {total / 1e6:.1f} MB; distil from it with data.source=packed data.root={pack.root}, "
        f"evaluate with eval --pack {pack.root}"
    )
    return 0


def open_source(args) -> tuple:
    """(DatasetSplits, a description of the source for the manifest) of the arguments."""
    from ..errors import UsageError
    from .args import open_datasets

    if args.toyworld:
        from ..data.sources import domain_splits
        from ..toyworld import build_world

        domain = build_world(args.root or None, seed=args.toyworld_seed, profile=args.toyworld).domain(
            (args.dataset or [None])[0]
        )
        return domain_splits(domain), {
            "kind": "toyworld",
            "profile": args.toyworld,
            "seed": args.toyworld_seed,
            "domain": domain.key,
        }
    if args.folder:
        from ..data.folders import load_image_folder

        return load_image_folder(args.folder), {"kind": "imagefolder", "root": args.folder}
    if args.dataset and len(args.dataset) > 1:
        raise UsageError(f"Pack one dataset at a time, got {len(args.dataset)}: {' '.join(args.dataset)}.")
    (splits,) = open_datasets(args)
    if args.split_json:
        return splits, {
            "kind": "split_json",
            "split_json": args.split_json,
            "image_folder": args.image_folder,
        }
    return splits, {"kind": "benchmark", "dataset": args.dataset[0], "root": args.root}
