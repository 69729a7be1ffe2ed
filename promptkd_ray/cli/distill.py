"""`promptkd-ray distill --config JOB.yaml [KEY=VALUE …]`: run or resume a Stage II job.

Locally it starts Ray in-process; under `ray job submit` it joins the cluster (RAY_ADDRESS).
Re-running the same job (same `name` and `storage_path`) resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, metavar="JOB.yaml", help="a `kind: distill` job file (see jobs/)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override job fields with dotted keys, e.g. train.epochs=2 data.root=/data",
    )


def run(args) -> int:
    from ..config import load_distill_job
    from ..distill import run_distillation

    job = load_distill_job(args.config, args.overrides)
    result = run_distillation(job)
    final = result.summary["final"]
    print(
        f"run {job.name}: {result.summary['epochs']} epochs, held-out agreement "
        f"{final.get('heldout_agreement', float('nan')):.1f}%, {result.summary['bad_images']} unreadable "
        f"image(s) skipped; student {result.student_artifact}"
    )
    return 0
