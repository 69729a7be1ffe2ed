"""`promptkd-ray import student|teacher`: the authors' official checkpoints → our artifacts.

    promptkd-ray import student model-best.pth.tar --student-clip ViT-B-16.pt --out runs/imported/student
    promptkd-ray import teacher model-best.pth.tar --clip-weights ViT-L-14.pt \\
        --dataset Caltech101 --root DATA --out runs/imported/caltech_teacher

The base CLIP file is the one the authors started from (their `./clip/*.pt`, a TorchScript
archive or a state dict), given as FILE or MODEL:FILE; the import checks that the checkpoint's
frozen towers equal it and that the written artifact reproduces the official model
(`promptkd_ray.interop.export`). A teacher import also writes class vectors for the dataset's
classes (or the names in --classnames-file, one per line, in label order).
"""

from __future__ import annotations

import argparse
import logging

from .args import add_dataset_arguments, open_datasets

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    student = sub.add_parser("student", help="a PromptKD student (VLPromptLearner/model-best.pth.tar)")
    student.add_argument("checkpoint", help="the official student checkpoint")
    student.add_argument(
        "--student-clip",
        required=True,
        help="base CLIP of the student, FILE or MODEL:FILE (the authors' ./clip/ViT-B-16.pt)",
    )
    student.add_argument("--class-vectors", help="class vectors it was distilled against (recorded by hash)")
    student.add_argument("--out", required=True, help="output NAME (writes NAME.safetensors + NAME.json)")
    teacher = sub.add_parser("teacher", help="a PromptSRC teacher (model-best.pth.tar / model.pth.tar-20)")
    teacher.add_argument("checkpoint", help="the official teacher checkpoint")
    teacher.add_argument(
        "--clip-weights",
        required=True,
        help="base CLIP of the teacher, FILE or MODEL:FILE (the authors' ./clip/ViT-L-14.pt)",
    )
    teacher.add_argument(
        "--classnames-file", help="class names, one per line in label order (instead of a dataset)"
    )
    add_dataset_arguments(teacher)
    teacher.add_argument("--out", required=True, help="output folder (teacher.* and class_vectors.*)")
    for q in (student, teacher):
        q.add_argument("--head-width", type=int, default=64, help="attention head width (OpenAI: 64)")


def _classnames(args) -> list[str]:
    from ..data.sources import read_names_file

    if args.classnames_file:
        return list(read_names_file(args.classnames_file))
    return list(open_datasets(args)[0].classnames)


def run(args) -> int:
    from ..interop.export import import_student, import_teacher

    if args.kind == "student":
        sha = None
        if args.class_vectors:
            from ..core.classvectors import load_class_vectors

            sha = load_class_vectors(args.class_vectors).sha256
        path = import_student(
            args.checkpoint, args.student_clip, args.out, head_width=args.head_width, class_vectors_sha256=sha
        )
        print(f"student artifact: {path}")
        return 0
    teacher_path, cv_path = import_teacher(
        args.checkpoint, args.clip_weights, _classnames(args), args.out, head_width=args.head_width
    )
    print(f"teacher artifact: {teacher_path}\nclass vectors: {cv_path}")
    return 0
