"""`promptkd-ray predict`: top-k class predictions of a student for a folder (or URI) of images
(the recipe: `promptkd_ray/predict.py`). Images are decoded with the training jobs' rules
(--max-image-pixels, --exif-orientation).
"""

from __future__ import annotations

import argparse

from .args import add_decode_arguments, decode_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="student artifact")
    p.add_argument("--class-vectors", required=True, help="class vectors the student was distilled against")
    p.add_argument("--images", required=True, help="folder or URI of images (searched recursively)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", required=True, help="predictions file: .parquet or .csv")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--no-ray", action="store_true", help="encode in-process instead of Ray Data")
    add_decode_arguments(p)


def run(args) -> int:
    from ..errors import UsageError
    from ..orchestration.inference import Encoding
    from ..predict import predict

    if not args.out.endswith((".parquet", ".csv")):
        raise UsageError(f"--out must end in .parquet or .csv, got {args.out!r}.")
    how = Encoding(not args.no_ray, args.batch_size, args.actors, options=decode_options(args))
    predict(args.student, args.class_vectors, args.images, args.out, args.top_k, how)
    return 0
