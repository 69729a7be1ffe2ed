"""Accuracy of the demo job trained from the soft-label cache against streaming, per seed.

Per seed S (the toy world's seed, also the run's), the demo's job (jobs/toy_b2n.yaml: 8 epochs,
2 DDP workers, PromptKD's loss) three times:

    streaming        the teacher pool runs every epoch on that epoch's seeded views
    cached K = 8     `promptkd-ray cache --views 8` first, then the run replays it: epoch e reads view
                     slot e — the very (image, view) pairs and features the streaming run used
    cached K = 1     one fixed view per image (Beyer et al.'s "fixed teacher"): every epoch replays
                     slot 0, in a fresh order per epoch

Each student is scored base-to-novel on the doodles domain (docs/protocol.md), like the demo. Tables are
mean ± std (population) over seeds; the per-seed HMs, build and epoch times go beside them.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/cache_accuracy.py --out runs/cache_accuracy
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/cache_accuracy.py --profile quick --seeds 0 \\
        --epochs 2 --out /tmp/ca                                                   # smoke test

Re-running with the same --out reuses finished runs and caches (their names are fixed).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

from cost import start_benchmark
from method_comparison import DEMO_JOB, score_seed, seeds_parser, table

log = logging.getLogger("cache_accuracy")


def parse_args(argv=None) -> argparse.Namespace:
    return seeds_parser(__doc__.splitlines()[0], "runs/cache_accuracy").parse_args(argv)


def job(args, seed: int, name: str, *extra: str):
    from promptkd_ray.config import load_distill_job

    overrides = [
        f"name={name}-seed{seed}",
        f"storage_path={Path(args.out).resolve() / 'runs'}",
        f"seed={seed}",
        f"data.root={args.cache_dir}",
        f"data.toyworld_profile={args.profile}",
        f"data.toyworld_seed={seed}",
        *([f"train.epochs={args.epochs}"] if args.epochs else []),
        *extra,
    ]
    return load_distill_job(DEMO_JOB, overrides)


def runs_of_seed(args, seed: int, timings: dict) -> dict:
    """The three runs of one seed (building each cache first); wall seconds go into `timings`."""
    from promptkd_ray.distill import build_cache, run_distillation

    streaming = job(args, seed, "streaming")
    epochs = streaming.train.epochs
    runs = {"streaming": run_distillation(streaming)}
    timings[(seed, "streaming")] = [e["epoch_seconds"] for e in runs["streaming"].history]
    for views in (epochs, 1):
        label, cache = f"cached K = {views}", Path(args.out).resolve() / "caches" / f"seed{seed}-K{views}"
        started = time.perf_counter()
        build_cache(streaming, out=str(cache), views=views)
        timings[(seed, f"build K = {views}")] = [time.perf_counter() - started]
        runs[label] = run_distillation(job(args, seed, f"cached-K{views}", f"teacher.cache={cache}"))
        timings[(seed, label)] = [e["epoch_seconds"] for e in runs[label].history]
    return runs


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    scores, timings = [], {}
    for seed in args.seeds:
        runs = runs_of_seed(args, seed, timings)
        scores += score_seed(args, seed, runs)
    b2n, _ = table(scores, "ToyDoodles", ("base", "novel", "hm"))
    per_seed = [
        "| model | " + " | ".join(f"HM seed {s}" for s in args.seeds) + " |",
        "|---|" + "---|" * len(args.seeds),
    ]
    for model in dict.fromkeys(s.model for s in scores):
        hms = {s.seed: s.metrics["hm"] for s in scores if s.model == model and s.dataset == "ToyDoodles"}
        per_seed.append(f"| {model} | " + " | ".join(f"{hms[s]:.2f}" for s in args.seeds) + " |")
    time_lines = [
        f"- seed {seed}, {what}: " + ", ".join(f"{t:.1f}" for t in ts) + " s"
        for (seed, what), ts in timings.items()
    ]
    command = "python benchmarks/cache_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            f"# Streaming vs the soft-label cache on the toy world ({args.profile}, seeds "
            f"{', '.join(map(str, args.seeds))})",
            "",
            f"Command: `{command.strip()}`.",
            "",
            "## Base-to-novel on ToyDoodles (mean ± std over seeds)",
            "",
            b2n,
            "",
            "## HM per seed",
            "",
            "\n".join(per_seed),
            "",
            "## Seconds (epoch_seconds per epoch of each run, as it recorded them; a build's wall time)",
            "",
            *time_lines,
            "",
        ]
    )
    (out / "comparison.md").write_text(text)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "seed", "base", "novel", "hm"])
        for s in scores:
            if s.dataset == "ToyDoodles":
                writer.writerow([s.model, s.seed, *(f"{s.metrics[k]:.2f}" for k in ("base", "novel", "hm"))])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
