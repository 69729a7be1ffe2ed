"""`promptkd-ray tune --space tune_spaces/S.yaml [--config JOB.yaml] [KEY=VALUE …]`: a Stage II sweep.

The space (see tune_spaces/ and `config/space.py`) names the job keys to vary, the search, the
scheduler and the selection metric; `--config` (default: the space's `job:`) is the job it
sweeps, with the overrides applied to every trial. Locally it starts Ray in-process; under
`ray job submit` it joins the cluster. Running the same command again resumes the sweep: finished
trials are kept. Outputs go to STORAGE_PATH/sweeps/NAME/ (trials.csv, sweep.md, sweep.png,
best_job.yaml, best/).
"""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--space", required=True, metavar="SPACE.yaml", help="a `kind: space` file (see tune_spaces/)"
    )
    p.add_argument(
        "--config",
        default="",
        metavar="JOB.yaml",
        help="the `kind: distill` job to sweep (default: the space's job:)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override job fields in every trial")


def run(args) -> int:
    from ..tune import open_sweep, run_sweep

    command = (
        "promptkd-ray tune " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if sys.argv[1:2] == ["tune"]
        else f"promptkd-ray tune --space {args.space}" + (f" --config {args.config}" if args.config else "")
    )
    sweep = open_sweep(args.space, args.config, args.overrides, command)
    report = run_sweep(sweep)
    if report.best is None:
        print(f"sweep {sweep.name}: no trial completed; see {report.folder}/trials.csv and sweep.md")
        return 1
    b = report.best
    print(
        f"sweep {sweep.name}: best trial {b.trial_id} ({sweep.space.metric} {b.final:.4f}) of {len(report.trials)}; "
        f"{report.folder}/sweep.md; run it with: promptkd-ray distill --config {report.best_job}"
    )
    return 0
