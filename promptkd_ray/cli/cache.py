"""`promptkd-ray cache --config JOB.yaml [--views K] [--out PATH] [KEY=VALUE …]`: the soft-label cache.

Runs the job's teacher pool once per view slot over the job's images (K slots, default the job's
epochs) and over its held-out slice, and writes the teacher's features with each view's
parameters as Parquet (`orchestration/cache.py`). Then `distill … teacher.cache=PATH` replays
it without a teacher. Locally it starts Ray in-process; under `ray job submit` it joins the cluster.
Re-running the same command finishes an interrupted build.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, metavar="JOB.yaml", help="a `kind: distill` job file (see jobs/)"
    )
    p.add_argument(
        "--views", type=int, default=0, metavar="K", help="views per image (default: the job's epochs)"
    )
    p.add_argument(
        "--out",
        default="",
        metavar="PATH",
        help="cache folder or URI (default: teacher.cache, else STORAGE_PATH/soft_labels/NAME)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override job fields, as for `distill`")


def run(args) -> int:
    from ..config import load_distill_job
    from ..distill import build_cache
    from ..errors import UsageError

    if args.views < 0:
        raise UsageError(f"--views must be ≥ 1 (or 0 for the job's epochs), got {args.views}.")
    job = load_distill_job(args.config, args.overrides)
    cache = build_cache(job, args.out, args.views)
    m = cache.manifest
    print(
        f"cache {cache.storage.root}: {m['views']} views, {m['rows']} rows, {m['bytes'] / 1e6:.1f} MB "
        f"({m['bytes'] / max(m['rows'], 1):.0f} bytes per view); distil from it with teacher.cache={cache.storage.root}"
    )
    return 0
