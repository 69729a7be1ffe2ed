"""The speed limit of a Stage II epoch, and how far ours is from it, measured in one run.

    limit     one process, the same math on the same data: the job's images decoded once into memory;
              every epoch e its order (`epoch_order`), each image's seeded view of slot e (`view_rng`,
              `sample_view`, `render_view`, the job's crop scale), the teacher's normalised features of
              those views, then the student step (`core.step.distill_step`: the job's student, loss,
              optimiser and stored class vectors). "cached" counts render + step (the teacher's
              features computed before the epoch, as a soft-label cache holds them); "streaming" also
              counts the teacher image tower over the epoch's views.
    ours      `run_distillation` of the same job on a local Ray: streaming (decode tasks → teacher
              actors → Train workers) and cached (a soft-label cache of K = epochs views, built first
              and timed apart), at 1 and 2 Train workers, with `data.in_memory=never` (every epoch
              a Ray Data plan) and `always` (resident: each worker decodes its share once and renders
              the views itself).

The limit is measured before and after ours; each mode's limit is the faster of the two (the other
load of a shared machine only ever slows it), and the header gives both.

Per row: the median epoch of epochs ≥ 1 (ours: its own `epoch_seconds`, start-up included), images/s,
start-up (ours: seconds to the first batch), and ÷ limit (ours' epoch seconds over the limit's of the
same mode). Held-out scoring is off in both (`data.heldout_images=0`): it is not part of the step's
math. The limit runs with `--threads` torch threads (1 = what each Ray worker gets here).

    python benchmarks/limit.py --out results/limit                      # quick toy world, 4 epochs
    python benchmarks/limit.py --set data.toyworld_profile=full --epochs 3 --out results/limit_full
    python benchmarks/limit.py --out results/limit_real --modes cached --workers 1 --epochs 2 --set \
        data.toyworld_profile=quick teacher.spec=ViT-L-14 student.spec=ViT-B-16 student.depth=9 \
        data.limit=32 train.batch_size=8 teacher_pool.batch_size=8 data.decode_batch_size=8   # real sizes

With only "cached" measured, the limit's steps take random unit vectors for the teacher's features (the
step costs the same whatever their values), so no teacher runs in the limit loop.

Writes limit.md and limit.csv to --out and prints the table. Ratios mean something only within one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cost import write_outputs

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("limit")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "jobs" / "toy_b2n.yaml"), help="the distill job")
    p.add_argument(
        "--set", nargs="*", default=["data.toyworld_profile=quick"], help="job overrides KEY=VALUE"
    )
    p.add_argument("--epochs", type=int, default=4, help="epochs per measurement (the first is not counted)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Train worker counts for ours")
    p.add_argument("--modes", nargs="+", default=["streaming", "cached"], choices=["streaming", "cached"])
    p.add_argument(
        "--in-memory",
        nargs="+",
        default=["never", "always"],
        choices=["never", "always"],
        help="data.in_memory of ours: never streams every epoch, always decodes once into the workers",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of the limit loop")
    p.add_argument("--num-cpus", type=int, default=6, help="logical CPUs of the local Ray")
    p.add_argument("--out", required=True, help="folder for limit.md and limit.csv")
    return p.parse_args(argv)


def job_of(args, storage: Path, name: str, *more: str):
    from promptkd_ray.config import load_distill_job

    overrides = [*args.set, f"train.epochs={args.epochs}", "data.heldout_images=0", f"storage_path={storage}"]
    return load_distill_job(args.config, [*overrides, "ray.progress_bars=false", f"name={name}", *more])


def limit_epochs(job, storage: Path, stand_in: bool = False) -> dict:
    """The plain loop: per epoch the seconds of rendering views, of the teacher and of the steps
    (`stand_in`: random unit vectors for the teacher's features, when only "cached" is measured)."""
    from promptkd_ray.core.schedule import build_optimizer
    from promptkd_ray.core.step import distill_step
    from promptkd_ray.data.decode import read_image, render_view, to_model_input, view_rng
    from promptkd_ray.data.transforms import sample_view
    from promptkd_ray.distill_setup import new_student, prepare
    from promptkd_ray.orchestration.encoder import ImageEncoder
    from promptkd_ray.orchestration.epochs import epoch_order
    from promptkd_ray.storage import Storage

    setup = prepare(job, Storage(str(storage / "limit_run")))
    spec, ids = setup.stream.decode, list(setup.source.train_paths)
    start = time.perf_counter()
    images = [read_image(i, spec.options) for i in ids]
    decode_s = time.perf_counter() - start
    teacher = None if stand_in else ImageEncoder(setup.stream.teacher, job.train.precision)
    torch.manual_seed(job.seed)
    student = new_student(job, setup.student_spec, setup.class_vectors.dim)
    optimizer = build_optimizer(student.trainable_parameters(), job.train)
    vectors, scale, batch = setup.class_vectors.vectors, setup.class_vectors.logit_scale, job.train.batch_size
    epochs = []
    for epoch in range(job.train.epochs):
        t0 = time.perf_counter()
        order = epoch_order(spec.seed, epoch, len(ids), spec.shuffle)
        views = np.stack(
            [
                render_view(
                    images[i],
                    sample_view(
                        *images[i].size, view_rng(spec.seed, ids[i], epoch), scale=(spec.crop_scale_min, 1.0)
                    ),
                    spec.size,
                )
                for i in order
            ]
        )
        t1 = time.perf_counter()
        if stand_in:  # only "cached" is measured: the step's cost does not depend on the features' values
            features = torch.nn.functional.normalize(torch.randn(len(views), vectors.shape[1]), dim=-1)
        else:
            features = torch.cat([teacher.encode(views[i : i + 256]) for i in range(0, len(views), 256)])
        t2 = time.perf_counter()
        steps = len(views) // batch
        for s in range(steps):
            chunk = slice(s * batch, (s + 1) * batch)
            pixels = to_model_input(torch.from_numpy(views[chunk]))
            distill_step(student, pixels, features[chunk], vectors, optimizer, job.loss, scale)
        t3 = time.perf_counter()
        epochs.append({"render": t1 - t0, "teacher": t2 - t1, "step": t3 - t2, "images": steps * batch})
        log.info(
            "limit epoch %d: render %.2f s, teacher %.2f s, steps %.2f s", epoch, t1 - t0, t2 - t1, t3 - t2
        )
    return {"decode_once_s": decode_s, "epochs": epochs}


def ours(job) -> dict:
    from promptkd_ray.distill import run_distillation

    start = time.perf_counter()
    history = run_distillation(job).history
    return {"wall_s": time.perf_counter() - start, "history": history}


def median_after_first(values: list) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def limit_seconds(limit: dict) -> dict:
    eps = limit["epochs"]
    return {
        "cached": median_after_first([e["render"] + e["step"] for e in eps]),
        "streaming": median_after_first([e["render"] + e["teacher"] + e["step"] for e in eps]),
    }


def rows_of(limit: dict, runs: dict, modes: list, again: dict) -> list[dict]:
    """The table's rows; the limit of a mode is the faster of its two measurements (before and
    after ours: the machine's other load moves them, never below what the machine can do)."""
    first, second = limit_seconds(limit), limit_seconds(again)
    limit_s = {mode: min(first[mode], second[mode]) for mode in first}
    eps = limit["epochs"]
    images = eps[0]["images"]
    rows = []
    for mode in modes:
        rows.append(
            {
                "mode": mode,
                "who": "limit (one process)",
                "epoch_s": limit_s[mode],
                "images_per_s": images / limit_s[mode],
                "startup_s": 0.0,
                "ratio": 1.0,
                "run_wall_s": "",
            }
        )
        for (m, workers, in_memory), run in runs.items():
            if m != mode:
                continue
            h = run["history"]
            epoch_s = median_after_first([e["epoch_seconds"] for e in h])
            rows.append(
                {
                    "mode": mode,
                    "who": f"ours, {workers} worker(s)" + (", resident" if in_memory == "always" else ""),
                    "epoch_s": epoch_s,
                    "images_per_s": median_after_first([e["images"] for e in h]) / epoch_s,
                    "startup_s": median_after_first([e["startup_s"] for e in h]),
                    "ratio": epoch_s / limit_s[mode],
                    "run_wall_s": run["wall_s"],
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| mode | who | epoch s (median, epochs ≥ 1) | images/s | start-up s | ÷ limit | run wall s |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        wall = f"{r['run_wall_s']:.1f}" if r["run_wall_s"] != "" else ""
        lines.append(
            f"| {r['mode']} | {r['who']} | {r['epoch_s']:.2f} | {r['images_per_s']:.1f} | {r['startup_s']:.2f} "
            f"| × {r['ratio']:.2f} | {wall} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("limit", "promptkd_ray"):
        logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "runs"
        stand_in = "streaming" not in args.modes
        limit = limit_epochs(job_of(args, storage, "limit"), storage, stand_in)
        import ray

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        runs, cache_build_s = {}, None
        if "cached" in args.modes:
            from promptkd_ray.distill import build_cache

            start = time.perf_counter()
            build_cache(job_of(args, storage, "cache_build"), out=str(Path(tmp) / "cache"), views=args.epochs)
            cache_build_s = time.perf_counter() - start
        for mode in args.modes:
            for in_memory in args.in_memory:
                for workers in args.workers:
                    extra = [f"teacher.cache={Path(tmp) / 'cache'}"] if mode == "cached" else []
                    extra += [f"train.num_workers={workers}", f"data.in_memory={in_memory}"]
                    log.info("ours: %s, %d worker(s), data.in_memory=%s …", mode, workers, in_memory)
                    job = job_of(args, storage, f"{mode}_{workers}w_{in_memory}", *extra)
                    runs[(mode, workers, in_memory)] = ours(job)
        ray.shutdown()
        again = limit_epochs(job_of(args, storage, "limit_again"), storage, stand_in)  # after ours, too
    rows = rows_of(limit, runs, args.modes, again)
    head = (
        f"{args.config} {' '.join(args.set)}, {args.epochs} epochs, {limit['epochs'][0]['images']} images per "
        f"epoch; {os.cpu_count()} CPU cores, limit with {args.threads} torch thread(s); load average "
        f"{load_before:.1f} → {os.getloadavg()[0]:.1f}; the limit decoded every image once in "
        f"{limit['decode_once_s']:.2f} s; the limit's epoch before → after ours: "
        + ", ".join(
            f"{mode} {limit_seconds(limit)[mode]:.2f} → {limit_seconds(again)[mode]:.2f} s"
            for mode in args.modes
        )
        + (
            f"; the soft-label cache ({args.epochs} views) was built in {cache_build_s:.1f} s"
            if cache_build_s
            else ""
        )
    )
    text = f"{head}\n\n{table(rows)}\n"
    write_outputs(out, text, "limit.md", "limit.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
