"""`promptkd-ray teacher --config JOB.yaml [KEY=VALUE …]`: Stage I, a teacher and its class vectors.

With `teacher.mode: promptsrc` it trains IVLP prompts on k shots of the training classes with the
PromptSRC recipe on Ray Train (`promptkd_ray.teacher`); with `teacher.mode: zeroshot` it makes a
zero-shot teacher (no training, no Ray). Both write `teacher.{safetensors,json}` and
`class_vectors.{safetensors,json}` (all classes of the dataset) to storage_path/name/.
Re-running a job with the same name resumes it from its last epoch checkpoint.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, metavar="JOB.yaml", help="a `kind: teacher` job file (see jobs/)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override job fields with dotted keys, e.g. train.epochs=2 data.root=/data",
    )
    p.add_argument("--check", action="store_true", help="validate the job and exit")


def run(args) -> int:
    from ..config import load_teacher_job

    job = load_teacher_job(args.config, args.overrides)
    if args.check:
        print(f"{args.config}: ok ({job.teacher.mode} teacher {job.teacher.spec}, {job.data.dataset})")
        return 0
    from ..teacher import run_teacher_job

    result = run_teacher_job(job)
    accuracy = result.metrics.get("test_accuracy_train_classes")
    shown = (
        f", test accuracy on its {job.data.classes} classes {accuracy:.2f}%" if accuracy is not None else ""
    )
    print(f"teacher {result.teacher}\nclass vectors {result.class_vectors}{shown}")
    return 0
