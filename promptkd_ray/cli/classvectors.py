"""`promptkd-ray classvectors`: class vectors of a dataset's classes — or of any list of names (a
vocabulary, for KDPL's class-agnostic distillation) — made once by a teacher.

The teacher is a teacher artifact (prompted text: its learned context) or a zero-shot model spec
(templates: one, or CLIP's 60-template ensemble). Writes NAME.safetensors + NAME.json.
"""

from __future__ import annotations

import argparse
import logging

from .args import add_dataset_arguments, open_datasets

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    p.add_argument(
        "--names",
        help="a text file of class names, one per line (instead of a dataset); "
        "'toyworld' = the toy world's whole vocabulary",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", help="teacher artifact (from `promptkd-ray teacher` or `import`)")
    source.add_argument("--zeroshot", help="MODEL[:PRETRAINED] of a zero-shot teacher")
    p.add_argument("--templates", default="single", help="zero-shot templates: single | imagenet60")
    p.add_argument("--out", required=True, help="output path NAME (writes NAME.safetensors + NAME.json)")
    p.add_argument("--batch-size", type=int, default=256, help="classes per text-encoder batch")


def run(args) -> int:
    import torch

    from ..core.artifacts import ModelRef
    from ..core.classvectors import compute_class_vectors, save_class_vectors
    from ..data.sources import vocabulary_names

    if args.names:
        names, what = vocabulary_names(args.names), args.names
    else:
        (dataset,) = open_datasets(args)[:1]
        names, what = dataset.classnames, dataset.name
    teacher = ModelRef("teacher", args.teacher) if args.teacher else ModelRef("zeroshot", args.zeroshot)
    model = teacher.build("cuda" if torch.cuda.is_available() else "cpu")
    cv = compute_class_vectors(
        model, list(names), templates=args.templates, batch_size=args.batch_size, teacher_spec=teacher.spec
    )
    path = save_class_vectors(cv, args.out)
    log.info(
        "%d class vectors of dim %d for %s written to %s (sha256 %s…)",
        cv.num_classes,
        cv.dim,
        what,
        path,
        cv.sha256[:12],
    )
    return 0
