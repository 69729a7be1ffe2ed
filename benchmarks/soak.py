"""A long run: the demo's job on the quick toy world for many epochs, resources sampled per epoch.

Runs jobs/toy_b2n.yaml (2 DDP workers, one teacher actor) for `--epochs` epochs (default 30) on a
local Ray with a 200 MB object store, and records per epoch:

    trainer_rss_mb   resident memory of each Ray Train worker process (max over the epoch)
    teacher_rss_mb   resident memory of the teacher actor process(es) (max over the epoch)
    fds              open file descriptors: Train workers + teacher actors + the raylet (at the epoch's end)
    spilled_mb       object-store bytes spilled to disk since the cluster started (Ray's own counter)
    store_used_mb    object-store bytes in use at the epoch's end

A sampler (a Ray Train callback, so it runs beside the Train controller on this machine) polls the
processes under this run's raylet once a second — only this cluster's, other Ray clusters on the
machine are not counted. Growth is judged after a warm-up (`--warmup` epochs): the least-squares
slope per epoch of each series and its total change over the run. Writes soak.csv, soak.md (the
series and the verdict) and soak.png to --out.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/soak.py --out runs/soak
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/soak.py --epochs 3 --warmup 1 --out /tmp/soak   # smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
from cost import start_benchmark

log = logging.getLogger("soak")
DEMO_JOB = Path(__file__).resolve().parents[1] / "jobs" / "toy_b2n.yaml"
SERIES = ("trainer_rss_mb", "teacher_rss_mb", "fds", "spilled_mb", "store_used_mb")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/soak", help="folder for the run and the results")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="epochs left out when judging growth")
    p.add_argument(
        "--profile", default="quick", choices=("quick", "dialect", "full"), help="toy world profile"
    )
    p.add_argument("--cache-dir", default="", help="toy world cache (default: the user's cache)")
    return p.parse_args(argv)


def _kind(cmdline: list) -> str:
    text = " ".join(cmdline)
    if "RayTrainWorker" in text:
        return "trainer"
    if "TeacherPredictor" in text:
        return "teacher"
    return ""


def _fds(process) -> int:
    try:
        return process.num_fds()
    except Exception:  # the process ended between listing and asking
        return 0


def sampler_callback(raylet_pid: int, gcs_address: str, out_file: str, period_s: float = 1.0):
    """A Ray Train UserCallback that appends one JSON line per reported epoch to `out_file`."""
    from ray.train.v2.api.callback import UserCallback

    class Sampler(UserCallback):
        def __init__(self):  # picklable: the lock and the thread start on the controller's first report
            self.peaks: dict = {}
            self.lock = self.thread = None

        def _poll(self) -> dict:
            import psutil

            seen = {}
            for child in psutil.Process(raylet_pid).children(recursive=True):
                try:
                    kind = _kind(child.cmdline())
                    if kind:
                        seen[child.pid] = (kind, child.memory_info().rss / 2**20, child)
                except psutil.Error:
                    continue
            with self.lock:
                for pid, (kind, rss, _) in seen.items():
                    self.peaks[pid] = (kind, max(rss, self.peaks.get(pid, (kind, 0.0))[1]))
            return seen

        def _loop(self) -> None:
            while True:
                self._poll()
                time.sleep(period_s)

        def after_report(self, run_context, metrics, checkpoint):
            import psutil
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            if self.thread is None:
                self.lock = threading.Lock()
                self._poll()
                self.thread = threading.Thread(target=self._loop, daemon=True)
                self.thread.start()
            seen = self._poll()
            with self.lock:
                peaks, self.peaks = self.peaks, {}
            reply = get_memory_info_reply(get_state_from_address(gcs_address))
            row = {
                "epoch": int(metrics[0].get("epoch", -1)) if metrics else -1,
                "time": time.time(),
                "trainer_rss_mb": sorted(round(r, 1) for k, r in peaks.values() if k == "trainer"),
                "teacher_rss_mb": sorted(round(r, 1) for k, r in peaks.values() if k == "teacher"),
                "fds": sum(_fds(p) for _, _, p in seen.values()) + _fds(psutil.Process(raylet_pid)),
                "spilled_mb": reply.store_stats.spilled_bytes_total / 2**20,
                "store_used_mb": reply.store_stats.object_store_bytes_used / 2**20,
                "epoch_seconds": float(metrics[0].get("epoch_seconds", 0.0)) if metrics else 0.0,
            }
            with open(out_file, "a") as f:
                f.write(json.dumps(row) + "\n")

    return Sampler()


def slope(values: list) -> float:
    """Least-squares change per epoch."""
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), np.asarray(values, float), 1)[0])


def flatten(rows: list) -> list:
    """Per epoch: the max trainer / teacher RSS over processes, the other series as they are."""
    return [
        {
            "epoch": r["epoch"],
            "trainer_rss_mb": max(r["trainer_rss_mb"] or [0.0]),
            "teacher_rss_mb": max(r["teacher_rss_mb"] or [0.0]),
            "fds": r["fds"],
            "spilled_mb": r["spilled_mb"],
            "store_used_mb": r["store_used_mb"],
            "epoch_seconds": r["epoch_seconds"],
        }
        for r in rows
    ]


def verdict(rows: list, warmup: int) -> list:
    """Markdown lines: each series' slope per epoch and change after the warm-up."""
    tail = rows[warmup:] if len(rows) > warmup + 1 else rows
    lines = ["| series | first after warm-up | last | change | slope per epoch |", "|---|---|---|---|---|"]
    for name in SERIES:
        values = [r[name] for r in tail]
        lines.append(
            f"| {name} | {values[0]:.1f} | {values[-1]:.1f} | {values[-1] - values[0]:+.1f} | "
            f"{slope(values):+.3f} |"
        )
    return lines


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["trainer_rss_mb"] for r in rows], "o-", label="Train worker (max)")
    axes[0].plot(epochs, [r["teacher_rss_mb"] for r in rows], "s-", label="teacher actor")
    axes[0].set(title="resident memory (MB)", xlabel="epoch")
    axes[0].legend()
    axes[1].plot(epochs, [r["fds"] for r in rows], "o-")
    axes[1].set(title="open file descriptors", xlabel="epoch")
    axes[2].plot(epochs, [r["spilled_mb"] for r in rows], "o-", label="spilled (total)")
    axes[2].plot(epochs, [r["store_used_mb"] for r in rows], "s-", label="in use")
    axes[2].set(title="object store (MB)", xlabel="epoch")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    out = out.resolve()
    import ray
    from ray._private import ray_constants

    from promptkd_ray.config import load_distill_job
    from promptkd_ray.distill import run_distillation

    ray.init(
        address="local",
        num_cpus=6,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    samples = out / "samples.jsonl"
    samples.unlink(missing_ok=True)
    overrides = [
        f"name=soak-{args.epochs}",
        f"storage_path={out / 'runs'}",
        f"train.epochs={args.epochs}",
        f"data.toyworld_profile={args.profile}",
        "ray.progress_bars=false",
        *([f"data.root={args.cache_dir}"] if args.cache_dir else []),
    ]
    job = load_distill_job(str(DEMO_JOB), overrides)
    started = time.perf_counter()
    run_distillation(
        job, callbacks=[sampler_callback(raylet, ray.get_runtime_context().gcs_address, str(samples))]
    )
    wall = time.perf_counter() - started
    ray.shutdown()

    rows = flatten([json.loads(line) for line in samples.read_text().splitlines()])
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    series = [
        "| epoch | Train worker RSS MB | teacher RSS MB | fds | spilled MB | store in use MB | epoch s |",
        "|---|---|---|---|---|---|---|",
    ]
    series += [
        f"| {r['epoch']} | {r['trainer_rss_mb']:.1f} | {r['teacher_rss_mb']:.1f} | {r['fds']} | "
        f"{r['spilled_mb']:.1f} | {r['store_used_mb']:.1f} | {r['epoch_seconds']:.1f} |"
        for r in rows
    ]
    text = "\n".join(
        [
            f"# Soak: {len(rows)} epochs of the demo job ({args.profile} toy world), wall {wall:.1f} s",
            "",
            *series,
            "",
            f"Growth after {args.warmup} warm-up epochs:",
            "",
            *verdict(rows, args.warmup),
            "",
        ]
    )
    (out / "soak.md").write_text(text)
    plot(rows, out / "soak.png")
    print(text)
    print(f"soak wall {wall:.1f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
