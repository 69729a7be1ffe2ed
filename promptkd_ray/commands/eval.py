"""`promptkd-ray eval`: run an evaluation protocol and write the report.

Students (one artifact per seed) are scored against the given class vectors; a teacher artifact
or a zero-shot model spec is scored against class vectors it computes itself for the dataset's
classes. Images are encoded by Ray Data batch inference (or in-process with --no-ray).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "Evaluate students / teachers: base-to-novel, cross-dataset or domain generalisation."
PROTOCOLS = ("base2novel", "cross", "dg")
log = logging.getLogger(__name__)


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", nargs="+", help="benchmark name(s) (DG: several); or a name for --split-json")
    p.add_argument("--root", help="data root folder or URI holding the benchmark folders")
    p.add_argument("--split-json", help="a dataset in the split-JSON layout: ROOT/FOLDER/split_file.json")
    p.add_argument("--image-folder", default="images", help="image folder beside --split-json (default: images)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=PROTOCOLS, default="base2novel")
    add_dataset_arguments(p)
    p.add_argument("--student", nargs="*", default=[], help="student artifact(s), one per seed")
    p.add_argument("--class-vectors", help="class vectors the students are scored against")
    p.add_argument("--teacher", nargs="*", default=[], help="teacher artifact(s) (scored with their own text)")
    p.add_argument("--zeroshot", nargs="*", default=[], help="MODEL[:PRETRAINED] zero-shot CLIP(s)")
    p.add_argument("--templates", default="single", help="zero-shot templates: single | imagenet60")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--actors", type=int, default=1, help="inference actors (one GPU each where present)")
    p.add_argument("--no-ray", action="store_true", help="encode in-process instead of Ray Data")


def open_datasets(args) -> list:
    from ..cli import UserError
    from ..data.benchmarks import load_dataset, load_split_json_dataset

    if args.split_json:
        split = Path(args.split_json)
        name = (args.dataset or [split.parent.name])[0]
        return [load_split_json_dataset(split.parent.parent, split.parent.name, args.image_folder, split.name, name)]
    if not args.dataset or not args.root:
        raise UserError("Give --dataset NAME and --root DATA_ROOT, or --split-json PATH.")
    return [load_dataset(name, args.root) for name in args.dataset]


def run(args) -> int:
    from ..cli import UserError
    from ..evaluate import PUBLISHED_B2N, write_report

    if args.student and not args.class_vectors:
        raise UserError("Scoring students needs --class-vectors (the teacher's class vectors they learnt).")
    if not (args.student or args.teacher or args.zeroshot):
        raise UserError("Nothing to evaluate: give --student, --teacher and/or --zeroshot.")
    datasets = open_datasets(args)
    scores = []
    for dataset in datasets:
        scores += score_dataset(args, dataset)
    published = PUBLISHED_B2N if args.protocol == "base2novel" else None
    paths = write_report(scores, args.out, f"{args.protocol}: {', '.join(d.name for d in datasets)}", published)
    print((Path(paths["markdown"])).read_text())
    return 0


def warn_if_other_teacher(student_path: str, cv) -> None:
    """A student scored against class vectors of another teacher than the one it was distilled from
    scores near chance: say so (not an error — the same teacher may live at another path now)."""
    from ..artifacts import read_student_info

    learnt_from = read_student_info(student_path).extra.get("teacher")
    if learnt_from and cv.teacher and learnt_from != cv.teacher:
        log.warning("student %s was distilled from teacher %s but the class vectors come from %s: its scores "
                    "are only meaningful if these are the same model", student_path, learnt_from, cv.teacher)


def score_dataset(args, dataset) -> list:
    from ..classvectors import compute_class_vectors, load_class_vectors
    from ..evaluate import Score, all_classes, base_to_novel, restrict_by_name
    from ..inference import EncoderSpec, encode_items

    items = dataset.test
    paths, labels = [it.path for it in items], [it.label for it in items]
    protocol = {"base2novel": base_to_novel, "cross": all_classes, "dg": all_classes}[args.protocol]
    jobs = [("student", s, i) for i, s in enumerate(args.student)]
    jobs += [("teacher", t, i) for i, t in enumerate(args.teacher)]
    jobs += [("zeroshot", z, i) for i, z in enumerate(args.zeroshot)]
    scores = []
    for kind, source, seed in jobs:
        spec = EncoderSpec(kind, source)
        if kind == "student":
            cv = load_class_vectors(args.class_vectors)
            warn_if_other_teacher(source, cv)
        else:
            model, _ = spec.build()
            cv = compute_class_vectors(model, list(dataset.classnames), templates=args.templates)
        if args.protocol == "dg":
            cv = restrict_by_name(cv, dataset.classnames)
        encoded = encode_items(spec, paths, labels, use_ray=not args.no_ray, batch_size=args.batch_size,
                               num_actors=args.actors)
        if encoded.skipped:
            log.warning("%d unreadable test images skipped", encoded.skipped)
        metrics = protocol(encoded.features, encoded.labels, cv, dataset.classnames)
        label = {"student": "student", "teacher": "teacher", "zeroshot": f"zero-shot {source.split(':')[0]}"}[kind]
        scores.append(Score(dataset.name, label, seed, metrics))
        log.info("%s %s seed %d: %s", dataset.name, label, seed, {k: round(v, 2) for k, v in metrics.items()})
    return scores
