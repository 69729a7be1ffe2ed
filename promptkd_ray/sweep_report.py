"""What a sweep leaves in its folder: trials.csv, sweep.md (ranked), sweep.png (the metric against
each swept key, and learning curves that show where ASHA stopped trials), best_job.yaml and best/
(the winner's student and class vectors).

A trial is `completed` (all its epochs), `stopped early` (ASHA stopped it after fewer) or `failed`
(its error is in the table). The winner is the best final metric among completed trials: a trial
ASHA stopped early is never compared on an earlier epoch's value. All of these files are written
together (`Storage.write_files`): each is complete under a temporary name before any is moved into
place, so an interrupted report leaves the previous one whole.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass
from typing import Optional

from .report import png_bytes, pyplot
from .storage import Storage, read_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    trial_id: str
    params: dict  # swept key → value (named values by name)
    status: str  # completed | stopped early | failed
    epochs: int  # epochs it reported
    curve: list  # the metric after each epoch it reported (val_accuracy: the final value only)
    seconds: float  # wall time Tune measured
    run_dir: str  # its Stage II run folder
    error: str = ""

    @property
    def final(self) -> float:
        return self.curve[-1] if self.curve else math.nan


@dataclass(frozen=True)
class SweepReport:
    folder: str
    trials: list  # Trial, ranked
    best: Optional[Trial]
    best_job: str  # path of best_job.yaml ("" without a winner)


def collect_trials(sweep, results) -> list:
    """Tune's ResultGrid → Trials, ranked (completed by metric, then stopped early, then failed)."""
    trials = []
    for r in results:
        # Tune's trial id (a restored trial's folder may carry a suffix; its results do not)
        trial_id = (r.metrics or {}).get("trial_id") or re.sub(
            r"^trial_", "", r.path.rstrip("/").rsplit("/", 1)[-1]
        )
        rows = _rows_by_epoch(r.metrics_dataframe)
        curve = [
            float(row[sweep.space.metric])
            for row in rows
            if row.get(sweep.space.metric) is not None and not _nan(row[sweep.space.metric])
        ]
        epochs = len(rows)
        wanted = int(r.config.get("train.epochs", sweep.job.train.epochs))
        status = "failed" if r.error else "completed" if epochs >= wanted else "stopped early"
        trials.append(
            Trial(
                trial_id,
                dict(r.config),
                status,
                epochs,
                curve,
                float(max((row.get("time_total_s") or 0) for row in rows)) if rows else 0.0,
                sweep.trial_run_dir(trial_id),
                str(r.error).splitlines()[0][:300] if r.error else "",
            )
        )
    sign = -1 if sweep.space.mode == "max" else 1
    order = {"completed": 0, "stopped early": 1, "failed": 2}
    return sorted(
        trials, key=lambda t: (order[t.status], sign * t.final if t.curve else math.inf, t.trial_id)
    )


def _rows_by_epoch(df) -> list:
    """A trial's results, one per epoch (the last one reported for it), in epoch order: a trial
    restarted by a resumed sweep reports its recorded epochs again, beside what Tune kept."""
    rows = [] if df is None or df.empty else df.to_dict("records")
    by_epoch = {
        int(row["epoch"]): row for row in rows if row.get("epoch") is not None and not _nan(row["epoch"])
    }
    return [by_epoch[e] for e in sorted(by_epoch)]


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def class_vectors_of(job, run_dir: str) -> str:
    """The class vectors a trial's student was distilled against: the job's given ones, else the
    ones its run computed (a run also keeps a copy of given ones, but one finished by an older
    version may not)."""
    return job.teacher.class_vectors or Storage(run_dir).path("class_vectors")


def write_sweep_outputs(sweep, results, caches: dict) -> SweepReport:
    import yaml

    from .config import distill_job_from_dict, to_dict

    trials = collect_trials(sweep, results)
    folder = Storage(sweep.folder)
    files = {"trials.csv": trials_csv(sweep, trials).encode("utf-8")}
    best = trials[0] if trials and trials[0].status == "completed" and trials[0].curve else None
    best_job = ""
    if best is not None:
        raw = sweep.trial_raw(best.params, best.trial_id, caches)
        raw.update(name=f"{sweep.name}-best", storage_path=sweep.job.storage_path)
        raw["ray"]["progress_bars"] = sweep.job.ray.progress_bars
        job = distill_job_from_dict(raw, sweep.space.source)
        text = yaml.safe_dump(to_dict(job), sort_keys=False)
        header = (
            f"# The winner of sweep {sweep.name} (trial {best.trial_id}, {sweep.space.metric} "
            f"{best.final:.4g}).\n#   promptkd-ray distill --config {folder.path('best_job.yaml')}\n"
        )
        if "teacher.ensemble" in best.params:  # the caches below are the members', in this order
            header += f"# Its teacher ensemble: {best.params['teacher.ensemble']} (teacher.ensemble).\n"
        class_vectors = class_vectors_of(job, best.run_dir)
        for suffix in (".safetensors", ".json"):  # tensors first, sidecars last
            files[f"best/student{suffix}"] = Storage(best.run_dir).read_bytes(f"student{suffix}")
            files[f"best/class_vectors{suffix}"] = read_bytes(class_vectors + suffix)
        files["best_job.yaml"] = (header + text).encode("utf-8")
        best_job = folder.path("best_job.yaml")
    else:
        log.warning("sweep %s: no trial completed, so there is no winner (see trials.csv)", sweep.name)
    files["sweep.png"] = sweep_png(sweep, trials)
    files["sweep.md"] = sweep_markdown(sweep, trials, best).encode("utf-8")
    folder.write_files(files)  # all written, then moved into place together (storage.write_files)
    log.info("sweep %s: %d trials (%s); outputs in %s", sweep.name, len(trials), _counts(trials), folder.root)
    return SweepReport(folder.root, trials, best, best_job)


def _counts(trials: list) -> str:
    return ", ".join(
        f"{sum(t.status == s for t in trials)} {s}" for s in ("completed", "stopped early", "failed")
    )


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_csv(sweep, trials: list) -> str:
    keys, metric = list(sweep.space.params), sweep.space.metric
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", *keys, "status", "epochs", metric, f"{metric}_per_epoch", "seconds", "error"])
    for t in trials:
        writer.writerow(
            [
                t.trial_id,
                *(t.params.get(k, "") for k in keys),
                t.status,
                t.epochs,
                "" if not t.curve else f"{t.final:.6g}",
                ";".join(f"{v:.6g}" for v in t.curve),
                f"{t.seconds:.1f}",
                t.error,
            ]
        )
    return out.getvalue()


def sweep_markdown(sweep, trials: list, best: Optional[Trial]) -> str:
    space, keys = sweep.space, list(sweep.space.params)
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"Space `{space.source}` over `{', '.join(keys)}`; {space.search.algorithm} search, "
        f"{space.scheduler.kind} scheduler; selected on **{space.metric}** ({space.mode}imum, "
        "never on test labels nor on the training loss at a swept temperature).",
        "",
        f"Trials: {len(trials)} ({_counts(trials)}).",
        "",
    ]
    if sweep.command:
        lines += [f"Command: `{sweep.command}`", ""]
    lines += [
        "| rank | trial | " + " | ".join(keys) + f" | status | epochs | {space.metric} | seconds |",
        "|---|---|" + "---|" * (len(keys) + 4),
    ]
    for i, t in enumerate(trials, 1):
        lines.append(
            f"| {i} | {t.trial_id} | "
            + " | ".join(_show(t.params.get(k, "")) for k in keys)
            + f" | {t.status} | {t.epochs} | {'' if not t.curve else f'{t.final:.4f}'} | {t.seconds:.0f} |"
        )
    lines.append("")
    if best is not None:
        lines += [
            f"Winner: trial {best.trial_id} ("
            + ", ".join(f"{k} = {_show(best.params[k])}" for k in keys)
            + f"), {space.metric} {best.final:.4f}. Its job: `best_job.yaml` "
            "(`promptkd-ray distill --config best_job.yaml`); its student: `best/`.",
            "",
        ]
    failed = [t for t in trials if t.status == "failed"]
    lines += [f"- trial {t.trial_id} failed: {t.error}" for t in failed] + ([""] if failed else [])
    lines += ["![the metric against each swept key, and learning curves](sweep.png)", ""]
    return "\n".join(lines)


def sweep_png(sweep, trials: list) -> bytes:
    """Left: the final metric against each swept key (stopped-early trials at their last value, in
    grey); right: the metric per epoch of every trial, × where a trial stopped early."""
    plt = pyplot()
    keys, metric = list(sweep.space.params), sweep.space.metric
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        labels = sorted({_show(t.params.get(key)) for t in trials}, key=_sort_key)
        for t in (t for t in trials if t.curve):
            x = labels.index(_show(t.params.get(key)))
            done = t.status == "completed"
            ax.scatter(
                x, t.final, marker="o" if done else "x", color="tab:blue" if done else "grey", zorder=3
            )
        ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels or [""])) > 6 else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.set_title("● completed   × stopped early (its last value)", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    for t in (t for t in trials if len(t.curve) > 1 or (t.curve and t.status != "completed")):
        epochs = range(1, len(t.curve) + 1)
        ax.plot(epochs, t.curve, lw=1, alpha=0.8, color="tab:blue" if t.status == "completed" else "grey")
        if t.status == "stopped early":
            ax.scatter(len(t.curve), t.final, marker="x", color="tab:red", zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("learning curves (× = stopped by the scheduler)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {sweep.name}: {metric} ({sweep.space.mode}) — {_counts(trials)}", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def _sort_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
