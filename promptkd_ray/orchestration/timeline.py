"""Where a run's time goes: wall-clock marks of the driver and of rank 0, as seconds per phase.

    marks = Marks()                         driver: marks.mark("setup") as each phase ends
    worker = Marks(); worker.mark("…")      rank 0: loop start, ready, then per epoch e "trained_e",
                                            "scored_e", "reported_e"; written to the run at the end
    phases(driver, worker) → dict           setup, datasets, worker group start, worker setup, training,
                                            held-out scoring, reports, shutdown, finish (seconds)

Design decisions:
- Marks are `time.time()` (wall clock), so a driver's and a worker's marks compare; on a cluster
  they carry the nodes' clock skew (NTP keeps it to milliseconds).
- The worker's marks are one small JSON file in the run (`timeline.json`), written when its loop
  ends: a run restarted after a failure shows its last attempt.
"""

from __future__ import annotations

import json
import time

WORKER_FILE = "timeline.json"


class Marks:
    """Named wall-clock marks, in order."""

    def __init__(self, start: str = "start"):
        self.at = {start: time.time()}

    def mark(self, name: str) -> None:
        self.at[name] = time.time()

    def to_json(self) -> str:
        return json.dumps(self.at)


def phases(driver: dict, worker: dict) -> dict:
    """Seconds per phase of a run, from the driver's marks (start, setup, fit, fitted,
    finished) and rank 0's (start, ready, trained_e, scored_e, reported_e); {} without the worker's."""
    if not worker:
        return {}
    epochs = sorted(int(k.split("_")[1]) for k in worker if k.startswith("reported_"))
    starts = {e: worker[f"reported_{e - 1}"] if e - 1 in epochs else worker["ready"] for e in epochs}

    def total(a: str, b: str) -> float:
        return sum(worker[f"{b}_{e}"] - (starts[e] if a == "start" else worker[f"{a}_{e}"]) for e in epochs)

    last = worker[f"reported_{epochs[-1]}"] if epochs else worker["ready"]
    out = {
        "setup_s": driver["setup"] - driver["start"],
        "datasets_s": driver["fit"] - driver["setup"],  # the datasets, the console, the plan
        "worker_group_start_s": worker["start"] - driver["fit"],
        "worker_setup_s": worker["ready"] - worker["start"],
        "training_s": total("start", "trained"),
        "heldout_scoring_s": total("trained", "scored"),
        "reports_s": total("scored", "reported"),
        "shutdown_s": driver["fitted"] - last,
        "finish_s": driver["finished"] - driver["fitted"],
        "total_s": driver["finished"] - driver["start"],
    }
    return {k: round(v, 3) for k, v in out.items()}
