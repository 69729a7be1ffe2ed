"""Does label-free selection work? A sweep's trials ranked by its label-free metric against their
test HM, which the sweep never saw.

Runs the space (default tune_spaces/toy.yaml: KD temperature × prompt depth on the toy world) with
every trial to the end (FIFO, so every trial has a student to score; ASHA would leave most without
one), scores each student base-to-novel on the test split, and prints, for each candidate selection
metric: the Spearman rank correlation between the metric (oriented so that higher = better) and
test HM, and the regret — best test HM over the trials minus the test HM of the trial the metric
picks. Candidates: held-out KL(teacher ‖ student) at T = 1 (the space's), held-out top-1 agreement,
and — the wrong one, for contrast — the final training loss, which is measured at the swept T.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/label_free_selection.py --out runs/label_free_selection
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/label_free_selection.py --out /tmp/lfs \\
        data.toyworld_profile=quick train.epochs=2                              # smoke test

Re-running with the same --out resumes the sweep (finished trials are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from cost import start_benchmark, write_outputs

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = {"heldout_kl": -1, "heldout_agreement": 1, "loss": -1}  # sign: higher × sign = better


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "tune_spaces" / "toy.yaml"))
    p.add_argument("--out", default="runs/label_free_selection")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the space's job")
    return p.parse_args(argv)


def spearman(x, y) -> float:
    def ranks(v):
        v = np.asarray(v, float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def test_hm(sweep, trial, caches: dict) -> dict:
    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.data.sources import open_splits
    from promptkd_ray.evaluate import Entry, score
    from promptkd_ray.orchestration.inference import Encoding
    from promptkd_ray.sweep_report import class_vectors_of

    job = distill_job_from_dict(sweep.trial_raw(trial.params, trial.trial_id, caches))
    cv = load_class_vectors(class_vectors_of(job, trial.run_dir))
    (s,) = score(
        [Entry(trial.trial_id, ModelRef("student", f"{trial.run_dir}/student.safetensors"), cv, job.seed)],
        open_splits(job.data),
        "base2novel",
        how=Encoding(batch_size=128),
    )
    return s.metrics


def main(argv=None) -> int:
    from promptkd_ray.config.space import SchedulerConfig
    from promptkd_ray.storage import Storage
    from promptkd_ray.tune import cache_plan, open_sweep, run_sweep

    args, out = start_benchmark(parse_args, argv)
    sweep = open_sweep(args.space, "", [f"storage_path={out / 'runs'}", *args.overrides])
    sweep = dataclasses.replace(
        sweep, space=dataclasses.replace(sweep.space, scheduler=SchedulerConfig(kind="fifo"))
    )
    report = run_sweep(sweep)
    caches = {
        label: Storage(sweep.folder).path(f"caches/{label}")
        for label in cache_plan(sweep.space, sweep.job)[1]
    }
    rows = []
    for t in (t for t in report.trials if t.status == "completed"):
        final = json.loads(Path(t.run_dir, "metrics.json").read_text())["final"]
        rows.append(
            {
                "trial": t.trial_id,
                **{k: t.params[k] for k in sweep.space.params},
                **{k: final[k] for k in CANDIDATES},
                **test_hm(sweep, t, caches if sweep.space.search.cache else {}),
            }
        )
    best_hm = max(r["hm"] for r in rows)
    lines = [
        f"# Label-free selection on `{Path(args.space).name}` ({len(rows)} trials, every one to the end)",
        "",
        "| selection metric | Spearman with test HM (metric oriented: higher = better) | picks | its test HM | "
        "regret (best HM − its HM) |",
        "|---|---|---|---|---|",
    ]
    for metric, sign in CANDIDATES.items():
        rho = spearman([sign * r[metric] for r in rows], [r["hm"] for r in rows])
        pick = max(rows, key=lambda r: sign * r[metric])
        lines.append(
            f"| {metric}{' (training loss at the swept T)' if metric == 'loss' else ''} | {rho:+.3f} | "
            f"trial {pick['trial']} | {pick['hm']:.2f} | {best_hm - pick['hm']:.2f} |"
        )
    keys = list(sweep.space.params)
    lines += [
        "",
        "| trial | "
        + " | ".join(keys)
        + " | held-out KL | held-out agreement | train loss | base | novel | HM |",
        "|---|" + "---|" * (len(keys) + 6),
    ]
    for r in sorted(rows, key=lambda r: -r["hm"]):
        lines.append(
            f"| {r['trial']} | "
            + " | ".join(str(r[k]) for k in keys)
            + f" | {r['heldout_kl']:.4f} | {r['heldout_agreement']:.1f} | {r['loss']:.3f} | {r['base']:.2f} | "
            f"{r['novel']:.2f} | {r['hm']:.2f} |"
        )
    text = "\n".join(lines + ["", f"Sweep outputs: {report.folder}", ""])
    write_outputs(out, text, "selection.md", "trials_test.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
