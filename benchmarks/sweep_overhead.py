"""A sweep's trials per hour, and where a trial's time goes, before and after a change, in one run.

Runs the same space (default tune_spaces/toy.yaml: 8 trials under ASHA on the toy world) once per
setting, one after the other on one local Ray, each in its own folder. Each sweep's soft-label
cache is built first (`tune.prepare_caches`) and timed apart; the sweep that follows finds it whole
and runs only the trials. Per setting: the trials' wall seconds (the sweep without its cache
build), trials and epochs per hour, and — from each completed trial's `metrics.json` timeline
(`orchestration/timeline.py`) — the median seconds of every phase of a trial. Trials that ASHA
stopped end inside Ray Train and leave no timeline; their seconds (Tune's) are in the table.

    python benchmarks/sweep_overhead.py --out runs/sweep_overhead        # never vs always (quick world)
    python benchmarks/sweep_overhead.py --out runs/so --setting before: --setting after:data.in_memory=always

A setting is NAME:KEY=VALUE[,KEY=VALUE…] (job overrides; empty after the colon: the job as it is).
Writes sweep_overhead.md / .csv to --out and prints them. Ratios mean something only within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cost import start_benchmark, write_outputs

REPO = Path(__file__).resolve().parents[1]
PHASES = (
    "setup_s",
    "datasets_s",
    "worker_group_start_s",
    "worker_setup_s",
    "training_s",
    "heldout_scoring_s",
    "reports_s",
    "shutdown_s",
    "finish_s",
    "total_s",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "tune_spaces" / "toy.yaml"))
    p.add_argument(
        "--setting",
        action="append",
        help="NAME:KEY=VALUE,… (default: before:data.in_memory=never and after:data.in_memory=always)",
    )
    p.add_argument(
        "--set", nargs="*", default=["data.toyworld_profile=quick"], help="overrides for every setting"
    )
    p.add_argument("--num-cpus", type=int, default=6, help="logical CPUs of the local Ray")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def settings_of(args) -> list[tuple[str, list]]:
    raw = args.setting or ["before:data.in_memory=never", "after:data.in_memory=always"]
    out = []
    for text in raw:
        name, _, keys = text.partition(":")
        out.append((name, [k for k in keys.split(",") if k]))
    return out


def one_sweep(args, out: Path, name: str, overrides: list) -> dict:
    """Cache build, then the trials, of the space with `overrides`; → the row of the table."""
    from promptkd_ray.tune import open_sweep, prepare_caches, run_sweep

    sweep = open_sweep(args.space, "", [f"storage_path={out / 'runs' / name}", *args.set, *overrides])
    start = time.perf_counter()
    prepare_caches(sweep)
    cache_s = time.perf_counter() - start
    start = time.perf_counter()
    report = run_sweep(sweep)
    trials_s = time.perf_counter() - start
    epochs = sum(t.epochs for t in report.trials)
    timelines = []
    for t in report.trials:
        metrics = Path(t.run_dir) / "metrics.json"
        if t.status == "completed" and metrics.exists():
            timelines.append(json.loads(metrics.read_text()).get("timeline") or {})
    row = {
        "setting": name,
        "overrides": " ".join(overrides) or "(the job)",
        "cache_build_s": cache_s,
        "trials": len(report.trials),
        "stopped_early": sum(t.status == "stopped early" for t in report.trials),
        "epochs": epochs,
        "trials_wall_s": trials_s,
        "trials_per_hour": 3600 * len(report.trials) / trials_s,
        "epochs_per_hour": 3600 * epochs / trials_s,
        "trial_seconds": " ".join(f"{t.seconds:.0f}" for t in report.trials),
    }
    for phase in PHASES:
        values = [tl[phase] for tl in timelines if phase in tl]
        row[phase] = statistics.median(values) if values else float("nan")
    return row


def table(rows: list) -> str:
    head = ["setting", "trials", "stopped early", "epochs", "trials wall s", "trials/hour", "epochs/hour"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            f"| {r['setting']}: {r['overrides']} | {r['trials']} | {r['stopped_early']} | {r['epochs']} "
            f"| {r['trials_wall_s']:.1f} | {r['trials_per_hour']:.1f} | {r['epochs_per_hour']:.1f} |"
        )
    lines += ["", "Median seconds per phase of a completed trial (its `metrics.json` timeline):", ""]
    lines.append("| phase | " + " | ".join(r["setting"] for r in rows) + " |")
    lines.append("|" + "---|" * (len(rows) + 1))
    for phase in PHASES:
        lines.append(f"| {phase[:-2]} | " + " | ".join(f"{r[phase]:.2f}" for r in rows) + " |")
    lines += ["", "Each trial's wall seconds (Tune's):", ""]
    lines += [f"- {r['setting']}: {r['trial_seconds']}" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    import os

    import ray

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    load = os.getloadavg()[0]
    rows = [one_sweep(args, out, name, overrides) for name, overrides in settings_of(args)]
    ray.shutdown()
    text = (
        f"{args.space} with {' '.join(args.set)}; {os.cpu_count()} CPU cores, a local Ray of "
        f"{args.num_cpus} logical CPUs; load average {load:.1f} → {os.getloadavg()[0]:.1f}; cache builds: "
        + ", ".join(f"{r['setting']} {r['cache_build_s']:.1f} s" for r in rows)
        + f"\n\n{table(rows)}\n"
    )
    write_outputs(out, text, "sweep_overhead.md", "sweep_overhead.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
