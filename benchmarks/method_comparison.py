"""PromptKD, KDPL, KDPL-CA and ComKD-CLIP (with ComKD's two ablations) side by side on the toy world.

Per seed S (the toy world's seed, also the run's): the demo's job file, jobs/toy_b2n.yaml (8 epochs,
2 DDP workers, SGD 0.005 at batch 8, crops ≥ 50 %), once per configuration:

    promptkd          loss.preset=promptkd                 KL·T² (authors' normalisation, weight 1000)
    kdpl              loss.preset=kdpl                     symmetric KL, the student's logit scale
    kdpl_ca           loss.preset=kdpl_ca teacher.vocabulary=toyworld loss.class_agnostic_k=32
                                                           the teacher's distribution over the toy world's
                                                           whole vocabulary (108 names, not the domain's
                                                           30), the batch's top 32 kept
    comkd             loss.preset=comkd                    KL + IFAlign + EduAttention
    comkd w/o EduAttention   loss.preset=comkd loss.edu_attention=false
    comkd w/o IFAlign        loss.preset=comkd loss.ifalign_weight=0
    comkd, grad_clip_norm 1  loss.preset=comkd train.grad_clip_norm=1
                                                           (EduAttention diverges under the job's SGD
                                                           without it; docs/protocol.md)
    comkd w/o EduAttention, grad_clip_norm 1, and promptkd, grad_clip_norm 1: the clipping's own effect

and scores every student twice (docs/protocol.md): base-to-novel on the doodles domain (where it was
distilled, without labels), and cross-domain on the neon domain (other colours, shapes and style;
all its classes, class vectors of its classes from the same zero-shot teacher) — the cross-dataset
protocol. The zero-shot teacher and student are scored alongside. Tables are mean ± std (population)
over seeds; report.md, results.csv and comparison.md go to --out. A run whose loss becomes NaN or infinite
stops (`DivergedError`): it is listed in comparison.md with its message and left out of the tables.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/method_comparison.py --out runs/method_comparison
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/method_comparison.py --profile quick --seeds 0 \\
        --epochs 1 --out /tmp/mc                                                  # smoke test

Why K = 32 for KDPL-CA: the authors keep 1,000 of 20,930 names (4.8 %) of a batch's mean teacher
distribution, far more names than a batch of 8 images holds classes; here 4.8 % of 108 names (5) would
keep little beyond a worker's own 4 images' classes, so K is 32, a little more than the domain's 30 classes.
Re-running with the same --out reuses finished runs (their names are fixed).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

from cost import start_benchmark

from promptkd_ray.config.sections import TOYWORLD_PROFILES

REPO = Path(__file__).resolve().parents[1]
DEMO_JOB = REPO / "jobs" / "toy_b2n.yaml"
CONFIGS = {
    "promptkd": ["loss.preset=promptkd"],
    "kdpl": ["loss.preset=kdpl"],
    "kdpl_ca": ["loss.preset=kdpl_ca", "teacher.vocabulary=toyworld", "loss.class_agnostic_k=32"],
    "comkd": ["loss.preset=comkd"],
    "comkd w/o EduAttention": ["loss.preset=comkd", "loss.edu_attention=false"],
    "comkd w/o IFAlign": ["loss.preset=comkd", "loss.ifalign_weight=0"],
    "comkd, grad_clip_norm 1": ["loss.preset=comkd", "train.grad_clip_norm=1"],
    "comkd w/o EduAttention, grad_clip_norm 1": [
        "loss.preset=comkd",
        "loss.edu_attention=false",
        "train.grad_clip_norm=1",
    ],
    "promptkd, grad_clip_norm 1": ["loss.preset=promptkd", "train.grad_clip_norm=1"],
}
log = logging.getLogger("method_comparison")


def seeds_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs the demo's job once per toy-world seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--profile", choices=TOYWORLD_PROFILES, default=TOYWORLD_PROFILES[0])
    p.add_argument("--cache-dir", default="", help="toy world cache (default ~/.cache/promptkd_ray/toyworld)")
    p.add_argument("--epochs", type=int, default=0, help="epochs (default: the job's)")
    p.add_argument("--out", default=out)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = seeds_parser(__doc__.splitlines()[0], "runs/method_comparison")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    return p.parse_args(argv)


def distill(args, seed: int, config: str):
    from promptkd_ray.config import load_distill_job
    from promptkd_ray.distill import run_distillation

    name = f"{config.replace(' ', '_').replace('/', '')}-seed{seed}"
    return run_distillation(load_distill_job(DEMO_JOB, [*seed_overrides(args, seed, name), *CONFIGS[config]]))


def seed_overrides(args, seed: int, name: str) -> list[str]:
    """A job's overrides for toy-world seed `seed` (the run's seed too), named `name`, under
    --out/runs, its epochs from --epochs if given (args: --out, --cache-dir, --profile, --epochs)."""
    return [
        f"name={name}",
        f"storage_path={Path(args.out).resolve() / 'runs'}",
        f"seed={seed}",
        f"data.root={args.cache_dir}",
        f"data.toyworld_profile={args.profile}",
        f"data.toyworld_seed={seed}",
        *([f"train.epochs={args.epochs}"] if args.epochs else []),
    ]


def recorded_seconds(run) -> float:
    """Seconds the run's epochs took when they were trained (its history), so a reused run counts."""
    return sum(float(epoch["epoch_seconds"]) for epoch in run.history)


def score_seed(args, seed: int, runs: dict) -> list:
    """Scores of every run's student and of the zero-shot models, base-to-novel and cross-domain."""
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.data.sources import domain_splits
    from promptkd_ray.evaluate import Entry, class_vectors_for, score
    from promptkd_ray.orchestration.inference import Encoding
    from promptkd_ray.toyworld import build_world

    world = build_world(args.cache_dir or None, seed=seed, profile=args.profile)
    scores = []
    for protocol, domain in (("base2novel", "doodles"), ("cross", "neon")):
        splits = domain_splits(world.domain(domain))
        entries = [
            Entry("teacher zero-shot", ModelRef("zeroshot", world.teacher_spec), None, seed),
            Entry("student zero-shot", ModelRef("zeroshot", world.student_spec), None, seed),
        ]
        for config, result in runs.items():
            run_cv = load_class_vectors(f"{result.run_dir}/class_vectors")
            cv = class_vectors_for(result.student_artifact, splits, [run_cv], protocol)
            entries.append(Entry(config, ModelRef("student", result.student_artifact), cv, seed))
        scores += score(entries, splits, protocol, how=Encoding(batch_size=128))
    return scores


def table(scores: list, dataset: str, keys: tuple) -> tuple[str, list]:
    from promptkd_ray.report import summarize

    rows = [r for r in summarize([s for s in scores if s.dataset == dataset])]
    lines = ["| model | " + " | ".join(keys) + " | seeds |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        lines.append(
            f"| {r['model']} | "
            + " | ".join(f"{r[k]:.2f} ± {r[k + '_std']:.2f}" for k in keys)
            + f" | {r['seeds']} |"
        )
    return "\n".join(lines), rows


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    from promptkd_ray.errors import DivergedError

    began, scores, trained, diverged = time.perf_counter(), [], 0.0, []
    for seed in args.seeds:
        runs = {}
        for config in args.configs:
            try:
                runs[config] = distill(args, seed, config)
            except DivergedError as exc:
                log.warning("%s seed %d diverged: %s", config, seed, exc)
                diverged.append(f"- {config}, seed {seed}: {exc}")
                continue
            trained += recorded_seconds(runs[config])
        scores += score_seed(args, seed, runs)
    total = time.perf_counter() - began
    n_runs = len(args.seeds) * len(args.configs) - len(diverged)
    from promptkd_ray.report import write_report

    write_report(
        [s for s in scores if s.dataset == "ToyDoodles"], out / "report_b2n", "Methods, base-to-novel"
    )
    write_report([s for s in scores if s.dataset == "ToyNeon"], out / "report_cross", "Methods, cross-domain")
    b2n, _ = table(scores, "ToyDoodles", ("base", "novel", "hm"))
    cross, _ = table(scores, "ToyNeon", ("accuracy",))
    command = "python benchmarks/method_comparison.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            f"# Methods on the toy world ({args.profile}, seeds {', '.join(map(str, args.seeds))})",
            "",
            f"Command: `{command.strip()}`. Training time of the {n_runs} runs, as each run recorded it "
            f"(sum of metrics.csv's epoch_seconds, start-up included): {trained / 60:.1f} min; this "
            f"invocation's wall time (finished runs are reused, not re-trained): {total / 60:.1f} min.",
            "",
            "## Base-to-novel on ToyDoodles (distilled there without labels)",
            "",
            b2n,
            "",
            "## Cross-domain: zero-shot on ToyNeon (all classes, its own class vectors)",
            "",
            cross,
            "",
            *(["## Diverged runs (stopped, not scored)", "", *diverged, ""] if diverged else []),
        ]
    )
    (out / "comparison.md").write_text(text)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "model", "seed", "base", "novel", "hm", "accuracy"])
        for s in scores:
            writer.writerow(
                [
                    s.dataset,
                    s.model,
                    s.seed,
                    *(
                        f"{s.metrics[k]:.2f}" if k in s.metrics else ""
                        for k in ("base", "novel", "hm", "accuracy")
                    ),
                ]
            )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
