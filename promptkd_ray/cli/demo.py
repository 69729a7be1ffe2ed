"""`promptkd-ray demo`: the whole method offline, on the toy world, on a local Ray.

1. build (or load from the cache) the toy world: a tiny pretrained teacher CLIP that knows the
   "doodles" style, a smaller student CLIP that never saw it, and the domain on disk in the CoOp
   split-JSON layout;
2. distil the student on the domain's unlabeled train split (all classes) with the job file
   `jobs/toy_b2n.yaml` (teacher actor pool → Ray Train DDP workers), class vectors from the
   teacher's text; the flags below and any `key=value` override that job;
3. evaluate base / novel / HM (docs/protocol.md) of the teacher (zero-shot), the student (zero-shot, its
   own text tower) and the distilled student; write report.md / CSV / PNG under --out;
4. end with one line: RESULT teacher_hm=… student_zero_shot_hm=… student_distilled_hm=…
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..config.sections import TOYWORLD_PROFILES

log = logging.getLogger(__name__)

DEMO_JOB = "jobs/toy_b2n.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=DEMO_JOB,
        metavar="JOB.yaml",
        help=f"the toy-world distillation job (default: {DEMO_JOB}, relative to the repository)",
    )
    p.add_argument(
        "--profile",
        choices=TOYWORLD_PROFILES,
        help="toy world (default: the job's, dialect; full: the earlier demo world; quick: tests)",
    )
    p.add_argument("--seed", type=int, default=0, help="world and distillation seed")
    p.add_argument("--epochs", type=int, help="epochs (default: the job's)")
    p.add_argument("--workers", type=int, help="Ray Train DDP workers (default: the job's)")
    p.add_argument("--out", default="runs/demo", help="folder for the run and the report")
    p.add_argument("--cache-dir", default="", help="toy world cache (default ~/.cache/promptkd_ray)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the job, as for `distill` (e.g. loss.preset=kdpl)",
    )


def run(args) -> int:
    from ..config import load_distill_job
    from ..data.sources import open_world
    from ..distill import run_distillation
    from ..errors import UsageError
    from ..orchestration.session import ray_session
    from ..report import write_report

    if not Path(args.config).is_file():
        raise UsageError(
            f"The demo runs the job file {args.config}, which does not exist here; run it from "
            "the repository's root folder or pass --config."
        )
    flags = [
        f"storage_path={Path(args.out).resolve()}",
        f"seed={args.seed}",
        f"data.toyworld_seed={args.seed}",
        f"data.root={args.cache_dir}",
    ]
    flags += [f"data.toyworld_profile={args.profile}"] * (args.profile is not None)
    flags += [f"train.epochs={args.epochs}"] * (args.epochs is not None)
    flags += [f"train.num_workers={args.workers}"] * (args.workers is not None)
    job = load_distill_job(args.config, flags + list(args.overrides))
    profile = job.data.toyworld_profile
    if not any(o.startswith("name=") for o in args.overrides):  # the run's folder names its world
        job = dataclasses.replace(job, name=f"demo-{profile}-seed{args.seed}")
    log.info("stage 1/3: the toy world (%s profile, seed %d)", profile, args.seed)
    world = open_world(job.data)
    with ray_session():  # a local Ray started here for the run is shut down before the report
        log.info("stage 2/3: distillation (%s)", args.config)
        result = run_distillation(job)
        log.info("stage 3/3: evaluation on the test split")
        scores = evaluate_demo(world, job, result)
    domain = world.domain(job.data.dataset or None)
    paths = write_report(
        scores,
        Path(args.out) / "report",
        f"Label-free distillation on the toy world ({domain.name}, seed {args.seed}; "
        f"loss: {loss_summary(job.loss)})",
    )
    hm = {s.model: s.metrics["hm"] for s in scores}
    print(Path(paths["markdown"]).read_text())
    print(f"report: {paths['markdown']}, {paths['plot']}")
    print(
        f"RESULT teacher_hm={hm['teacher zero-shot']:.2f} student_zero_shot_hm={hm['student zero-shot']:.2f} "
        f"student_distilled_hm={hm['student distilled']:.2f}"
    )
    return 0


def evaluate_demo(world, job, result) -> list:
    """Base / novel / HM of the teacher and the student zero-shot (their own text) and of the
    distilled student (the run's class vectors, or, after a distillation over a vocabulary, the
    domain's class vectors from the same teacher) on the domain's test split."""
    from ..core.artifacts import ModelRef
    from ..core.classvectors import load_class_vectors
    from ..data.sources import domain_splits
    from ..evaluate import Entry, class_vectors_for, score
    from ..orchestration.inference import Encoding

    splits = domain_splits(world.domain(job.data.dataset or None))
    run_cv = load_class_vectors(f"{result.run_dir}/class_vectors")
    entries = [
        Entry("teacher zero-shot", ModelRef("zeroshot", world.teacher_spec)),
        Entry("student zero-shot", ModelRef("zeroshot", world.student_spec)),
        Entry(
            "student distilled",
            ModelRef("student", result.student_artifact),
            class_vectors_for(result.student_artifact, splits, [run_cv], "base2novel"),
        ),
    ]
    return score(entries, splits, "base2novel", how=Encoding(batch_size=128, precision=job.train.precision))


def loss_summary(loss) -> str:
    """The loss's parts in a few words, e.g. "kl + IFAlign + EduAttention" (the report's title)."""
    parts = [loss.kd] + ["IFAlign"] * bool(loss.ifalign_weight) + ["EduAttention"] * bool(loss.edu_attention)
    parts += [f"top-{loss.class_agnostic_k} classes"] * bool(loss.class_agnostic_k)
    return " + ".join(parts)
