"""The soft-label cache against streaming, measured in one run (ratios only mean something within it).

(a) toy sizes: the demo's job on the default toy world (tiny teacher and student, 4,500 images),
    E epochs streaming (teacher pool every epoch) vs E epochs replayed from a cache of K = E views,
    and the cache's build time; epoch time is each run's recorded epoch_seconds (start-up included).
(b) real sizes on the CPU: random-init ViT-L-14 teacher and ViT-B-16 student (depth 9, n_ctx 4,
    mlp2 projector; real_size.py's set-up) at 224 px, batch B, 1,000 classes: seconds per image
    of a streaming step (the teacher's image forward + the student's step) vs a cached step (the
    student's step with stored teacher features); fp32, torch threads = the machine's cores.
Sizes: bytes per cached view (measured on the toy cache) and what it implies for ImageNet.

python benchmarks/soft_label_cache.py --out runs/soft_label_cache           # both parts
python benchmarks/soft_label_cache.py --part real --images 16 --out /tmp/slc
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from cost import start_benchmark

from promptkd_ray.config.sections import TOYWORLD_PROFILES

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("soft_label_cache")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["toy", "real", "both"], default="both")
    p.add_argument("--epochs", type=int, default=3, help="(a) epochs of each run, and K")
    p.add_argument("--profile", choices=TOYWORLD_PROFILES, default=TOYWORLD_PROFILES[0], help="(a) toy world")
    p.add_argument("--images", type=int, default=24, help="(b) images per timed pass")
    p.add_argument("--batch-size", type=int, default=8, help="(b) batch size")
    p.add_argument("--out", default="runs/soft_label_cache")
    return p.parse_args(argv)


def toy(args) -> dict:
    from promptkd_ray.config import load_distill_job
    from promptkd_ray.distill import build_cache, run_distillation

    out = Path(args.out).resolve()
    base = [
        f"storage_path={out / 'runs'}",
        f"train.epochs={args.epochs}",
        f"data.toyworld_profile={args.profile}",
    ]

    def job(name, *extra):
        return load_distill_job(REPO / "jobs" / "toy_b2n.yaml", [f"name={name}", *base, *extra])

    started = time.perf_counter()
    cache = build_cache(job("stream"), out=str(out / "cache"), views=args.epochs)
    build_s = time.perf_counter() - started
    streamed = run_distillation(job("stream")).history
    cached = run_distillation(job("cached", f"teacher.cache={out / 'cache'}")).history
    m = cache.manifest
    result = {
        "build_s": build_s,
        "views": m["views"],
        "rows": m["rows"],
        "bytes": m["bytes"],
        "bytes_per_view": m["bytes"] / m["rows"],
        "stream_epoch_s": [e["epoch_seconds"] for e in streamed],
        "cached_epoch_s": [e["epoch_seconds"] for e in cached],
        "stream_startup_s": [e["startup_s"] for e in streamed],
        "cached_startup_s": [e["startup_s"] for e in cached],
    }
    result["stream_mean_s"] = sum(result["stream_epoch_s"]) / len(streamed)
    result["cached_mean_s"] = sum(result["cached_epoch_s"]) / len(cached)
    return result


def real(args) -> dict:
    """(b): seconds per image of the two steps at the real sizes, best of two timed passes."""
    from real_size import real_models, student_pass, teacher_pass

    torch.set_num_threads(os.cpu_count() or 1)
    m = real_models(args.batch_size, args.images)  # zero-shot ViT-L-14 teacher → ViT-B-16, 1,000 classes
    n = sum(b.shape[0] for b in m.batches)
    features = teacher_pass(m)  # warm-up, and the stored features of the cached step
    student_pass(m, features)
    timings = {"teacher": [], "student": []}
    for _ in range(2):
        t0 = time.perf_counter()
        fresh = teacher_pass(m)
        t1 = time.perf_counter()
        student_pass(m, fresh)
        t2 = time.perf_counter()
        timings["teacher"].append((t1 - t0) / n)
        timings["student"].append((t2 - t1) / n)
    teacher_s, student_s = min(timings["teacher"]), min(timings["student"])
    return {
        "images": n,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "teacher_s_per_image": teacher_s,
        "student_s_per_image": student_s,
        "stream_s_per_image": teacher_s + student_s,
        "cached_s_per_image": student_s,
        "speedup": (teacher_s + student_s) / student_s,
    }


def report(args, results: dict) -> str:
    lines = [
        f"# Soft-label cache vs streaming (`python benchmarks/soft_label_cache.py {' '.join(sys.argv[1:])}`)",
        "",
    ]
    if "toy" in results:
        t = results["toy"]
        lines += [
            "## (a) toy sizes, the demo's job",
            "",
            f"- build: K = {t['views']} views of each image + the held-out slice, {t['rows']} rows in "
            f"{t['build_s']:.1f} s; {t['bytes'] / 1e6:.2f} MB, {t['bytes_per_view']:.0f} bytes per view",
            f"- epoch seconds, streaming: {', '.join(f'{s:.1f}' for s in t['stream_epoch_s'])} "
            f"(mean {t['stream_mean_s']:.1f}; start-up {', '.join(f'{s:.1f}' for s in t['stream_startup_s'])})",
            f"- epoch seconds, cached: {', '.join(f'{s:.1f}' for s in t['cached_epoch_s'])} "
            f"(mean {t['cached_mean_s']:.1f}; start-up {', '.join(f'{s:.1f}' for s in t['cached_startup_s'])})",
            f"- cached / streaming epoch time: {t['cached_mean_s'] / t['stream_mean_s']:.2f}",
            "",
        ]
    if "real" in results:
        r = results["real"]
        lines += [
            "## (b) real sizes on the CPU (random-init ViT-L-14 → ViT-B-16, 224 px, fp32)",
            "",
            f"- {r['images']} images, batch {r['batch_size']}, {r['threads']} threads; best of 2 passes",
            f"- teacher image forward: {r['teacher_s_per_image']:.3f} s per image",
            f"- student step (forward + backward + SGD): {r['student_s_per_image']:.3f} s per image",
            f"- streaming step {r['stream_s_per_image']:.3f} s vs cached step {r['cached_s_per_image']:.3f} s "
            f"per image: × {r['speedup']:.2f}",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    results = {}
    if args.part in ("toy", "both"):
        results["toy"] = toy(args)
    if args.part in ("real", "both"):
        results["real"] = real(args)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = report(args, results)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
