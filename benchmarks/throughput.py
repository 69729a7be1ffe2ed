"""Stage II throughput: the authors' per-step loop vs our Ray pipeline, same models, same images, one run.

    (a) authors-style   one process; every step decodes + augments the batch, runs the teacher's image
                        tower on it AND the teacher's text tower over all classes (the official code
                        recomputes the text features every step), then the student step.
    (b) ours            Ray Data decode tasks → online teacher pool (actors) → Ray Train DDP students
                        that use stored class vectors; 1 and 2 trainer workers.

Images/s of (b) is the trainer's own per-epoch figure (all workers' images / epoch wall time, which
includes the few seconds in which the pipeline starts its teacher actors again each epoch: epochs
must be long enough to amortise them, as real ones are), the best of the epochs after the first;
(a) is timed the same way, best pass after a warm-up pass. Best-of, because a shared machine's
other load only ever slows a pass down.
Both run on the tiny test models by default (any open_clip spec can be given). Ratios are only
meaningful within one run on one machine.

    python benchmarks/throughput.py                       # tiny models, 32 px, 4096 images, batch 8
    python benchmarks/throughput.py --batch-size 32 --classes 1000
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("throughput")


def write_images(root: Path, count: int, classes: int, seed: int = 0) -> Path:
    """`count` random PNGs in the split-JSON layout (`root/bench/images`, `root/bench/split.json`)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "bench" / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        pixels = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (root / "bench" / "images" / f"{i:05d}.png").write_bytes(buffer.getvalue())
        rows.append([f"{i:05d}.png", i % classes, f"class {i % classes}"])
    split = {"train": rows, "test": rows[:classes]}
    (root / "bench" / "split.json").write_text(json.dumps(split))
    return root


def authors_style_images_per_s(paths: list, classnames: list, args) -> float:
    """(a): decode + augment, teacher image forward, teacher text forward over all classes, student step."""
    from promptkd_ray.config.distill import TrainConfig
    from promptkd_ray.core.loss_config import LOSS_PRESETS
    from promptkd_ray.core.models import build_student, build_teacher
    from promptkd_ray.core.schedule import build_optimizer
    from promptkd_ray.core.step import distill_step
    from promptkd_ray.data.decode import read_image, render_view, to_model_input
    from promptkd_ray.data.transforms import sample_view

    torch.manual_seed(0)
    teacher = build_teacher(args.teacher)
    student = build_student(args.student, teacher_dim=teacher.embed_dim, n_ctx=args.n_ctx, depth=args.depth)
    train = TrainConfig(optimizer="adamw", lr=0.01)
    optimizer = build_optimizer(student.trainable_parameters(), train)
    rng = np.random.default_rng(0)
    size = teacher.image_encoder.visual.image_size[0]
    loss = LOSS_PRESETS["promptkd"]

    def one_pass() -> tuple[int, float]:
        start, seen = time.perf_counter(), 0
        order = rng.permutation(len(paths))
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            views = []
            for j in order[i : i + args.batch_size]:
                image = read_image(paths[j])
                views.append(render_view(image, sample_view(*image.size, rng), size))
            images = to_model_input(torch.from_numpy(np.stack(views)))
            with torch.no_grad():
                teacher_features = teacher.encode_image(images)
                class_vectors = teacher.encode_text(classnames)  # every step, as the official code
            distill_step(
                student, images, teacher_features, class_vectors, optimizer, loss, float(teacher.logit_scale)
            )
            seen += images.shape[0]
        return seen, time.perf_counter() - start

    one_pass()  # warm-up
    return max(n / s for n, s in (one_pass() for _ in range(args.epochs - 1)))


def ours_images_per_s(root: Path, storage: Path, workers: int, args) -> tuple[float, float, float]:
    """(b): the Stage II job on the same images; (best trainer images/s over epochs ≥ 1 counting the
    epoch's start-up, that epoch's seconds to its first batch, its images/s after the first batch)."""
    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.distill import run_distillation

    job = distill_job_from_dict(
        {
            "name": f"throughput_{workers}w",
            "storage_path": str(storage),
            "teacher": {"spec": args.teacher},
            "student": {"spec": args.student, "n_ctx": args.n_ctx, "depth": args.depth},
            "data": {
                "source": "split_json",
                "root": str(root),
                "dataset": "bench",
                "image_folder": "images",
                "split_file": "split.json",
                "heldout_images": 0,
                "decode_batch_size": 32,
            },
            "teacher_pool": {"size": args.teacher_actors, "batch_size": 64},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size * workers,
                "num_workers": workers,
                "optimizer": "adamw",
                "lr": 0.01,
                "log_every": 10**6,
                "checkpoints_to_keep": 1,
            },
            "ray": {"progress_bars": False},
        }
    )
    history = run_distillation(job).history
    best = max(history[1:], key=lambda m: m["images"] / m["epoch_seconds"])
    return best["images"] / best["epoch_seconds"], best["startup_s"], best["images_per_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096, help="images per epoch")
    p.add_argument("--classes", type=int, default=100, help="classes the authors' loop encodes every step")
    p.add_argument("--epochs", type=int, default=3, help="passes per measurement (the first is warm-up)")
    p.add_argument("--batch-size", type=int, default=8, help="batch per trainer worker (authors: 8)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="trainer worker counts for (b)")
    p.add_argument("--teacher-actors", type=int, default=1, help="teacher pool size for (b)")
    p.add_argument("--teacher", default="tiny-vit-teacher", help="teacher MODEL[:PRETRAINED]")
    p.add_argument("--student", default="tiny-vit-student", help="student MODEL[:PRETRAINED]")
    p.add_argument("--n-ctx", type=int, default=2)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=6, help="logical CPUs of the local Ray cluster")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of (a); 1 = like each Ray worker of (b), and immune to OpenMP spin-waits "
        "on a shared machine",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("throughput", "promptkd_ray"):  # not open_clip's INFO chatter on the root logger
        logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "data", args.images, args.classes)
        split = json.loads((root / "bench" / "split.json").read_text())
        paths = [str(root / "bench" / "images" / rel) for rel, _, _ in split["train"]]
        classnames = [f"class {c}" for c in range(args.classes)]
        log.info("(a) authors-style loop …")
        authors = authors_style_images_per_s(paths, classnames, args)
        import ray

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        ours = {}
        for workers in args.workers:
            log.info("(b) ours with %d trainer worker(s) …", workers)
            ours[workers] = ours_images_per_s(root, Path(tmp) / "runs", workers, args)
        ray.shutdown()

    print(
        f"\nload average {load_before:.1f} → {os.getloadavg()[0]:.1f}; throughput, {args.teacher} → {args.student}, {args.images} images, {args.classes} classes, "
        f"batch {args.batch_size}/worker, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    )
    print(f"  (a) authors-style loop (teacher image + text towers every step): {authors:8.1f} images/s")
    for workers, (rate, startup, steady) in ours.items():
        print(
            f"  (b) ours, teacher pool of {args.teacher_actors} + {workers} trainer worker(s):      "
            f"{rate:8.1f} images/s   ratio (b)/(a) = {rate / authors:.2f}   (epoch start-up {startup:.1f} s; "
            f"after it {steady:.1f} images/s, ratio {steady / authors:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
