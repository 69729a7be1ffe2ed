"""`promptkd-ray eval`: run an evaluation protocol and write the report.

Students (one artifact per seed) are scored against the given class vectors; a teacher artifact
or a zero-shot model spec is scored against class vectors it computes itself for the dataset's
classes. Images are encoded by Ray Data batch inference (or in-process with --no-ray), through the
one decoder with the training jobs' rules (--max-image-pixels, --exif-orientation: set them as the
job's `data` section did). An unreadable test image (including one over the pixel limit) is an
error naming the file, unless --skip-unreadable: then it is left out, counted in the report beside
the score, and named under the table and in unreadable.csv.
"""

from __future__ import annotations

import argparse
import logging

from ..storage import read_bytes
from .args import add_dataset_arguments, add_decode_arguments, decode_options, open_datasets

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate import PROTOCOLS

    p.add_argument("--protocol", choices=PROTOCOLS, default="base2novel")
    add_dataset_arguments(p)
    p.add_argument("--student", nargs="*", default=[], help="student artifact(s), one per seed")
    p.add_argument(
        "--class-vectors",
        nargs="*",
        default=[],
        help="class vectors the students are scored against, one file per dataset (matched by class "
        "names); a dataset without one gets its class vectors from the students' own teacher",
    )
    p.add_argument(
        "--teacher", nargs="*", default=[], help="teacher artifact(s) (scored with their own text)"
    )
    p.add_argument("--zeroshot", nargs="*", default=[], help="MODEL[:PRETRAINED] zero-shot CLIP(s)")
    p.add_argument("--templates", default="single", help="zero-shot templates: single | imagenet60")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--actors", type=int, default=1, help="inference actors (one GPU each where the cluster has GPUs)"
    )
    p.add_argument("--no-ray", action="store_true", help="encode in-process instead of Ray Data")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave unreadable test images out and report their count (and names) beside the score",
    )
    add_decode_arguments(p)


def run(args) -> int:
    from ..config.sections import RayConfig
    from ..core.artifacts import ModelRef
    from ..core.classvectors import load_class_vectors
    from ..errors import UsageError
    from ..evaluate import Entry, class_vectors_for, score
    from ..orchestration import cluster
    from ..orchestration.inference import Encoding
    from ..report import PUBLISHED_B2N, write_report

    if not (args.student or args.teacher or args.zeroshot):
        raise UsageError("Nothing to evaluate: give --student, --teacher and/or --zeroshot.")
    options = decode_options(args)
    datasets = open_datasets(args)
    given, computed = [load_class_vectors(path) for path in args.class_vectors], {}
    others = [Entry("teacher", ModelRef("teacher", t), None, i) for i, t in enumerate(args.teacher)]
    others += [
        Entry(f"zero-shot {z.split(':')[0]}", ModelRef("zeroshot", z), None, i)
        for i, z in enumerate(args.zeroshot)
    ]
    if not args.no_ray:
        cluster.connect(RayConfig(), cpus_needed=2 + args.actors)
    scores = []
    for dataset in datasets:
        entries = []
        for seed, student in enumerate(args.student):
            cv = class_vectors_for(student, dataset, given, args.protocol, computed)
            warn_if_other_teacher(student, cv)
            entries.append(Entry("student", ModelRef("student", student), cv, seed))
        scores += score(
            entries + others,
            dataset,
            args.protocol,
            args.templates,
            Encoding(not args.no_ray, args.batch_size, args.actors, options=options),
            skip_unreadable=args.skip_unreadable,
        )
    published = PUBLISHED_B2N if args.protocol == "base2novel" else None
    paths = write_report(
        scores, args.out, f"{args.protocol}: {', '.join(d.name for d in datasets)}", published
    )
    print(read_bytes(paths["markdown"]).decode("utf-8"))
    return 0


def warn_if_other_teacher(student_path: str, cv) -> None:
    """A student scored against class vectors of another teacher than the one it was distilled from
    scores near chance: say so (not an error — the same teacher may live at another path now)."""
    from ..core.artifacts import read_student_info

    learnt_from = read_student_info(student_path).extra.get("teacher")
    if learnt_from and cv.teacher and learnt_from != cv.teacher:
        log.warning(
            "student %s was distilled from teacher %s but the class vectors come from %s: its scores "
            "are only meaningful if these are the same model",
            student_path,
            learnt_from,
            cv.teacher,
        )
