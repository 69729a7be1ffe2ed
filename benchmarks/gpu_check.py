"""GPU check of Stage II at the real sizes, on one GPU, in under eight minutes (time caps per part):

    teacher    random-init ViT-L-14 image forward, bf16 autocast, batch 256: images/s and MFU
    student    the ViT-B-16 student's step (forward + backward + SGD) with stored class vectors
               (1,000 classes) and given teacher features, bf16, batch 256: images/s and MFU
    pipeline   the Stage II job end to end: Ray Data decode → one teacher actor → one Train worker,
               the actor and the worker each on half of the GPU; best epoch after the first
    dtd        a DTD-sized epoch (2,820 images) of the same job with `data.in_memory=always` (the worker
               decodes once and renders the views; the teacher actor streams their features), against
               its limit: the teacher forward and the student step above, back to back, per image
    authors    the authors'-style loop: every step the teacher's image forward AND its prompted text
               forward over all 1,000 classes, then the student's step; batch 8 as theirs, bf16

MFU = counted FLOPs per image (FlopCounterMode, matmuls and convolutions, 2·MACs) × images/s ÷ the
peak, by default 989 TFLOP/s, an H100 SXM's bf16 dense figure (an assumption: `--peak-tflops` for
another GPU). Models are random-init (nothing downloads); their sizes are the real ones.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a GPU machine
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check      # CPU, tiny models, seconds

It needs the package and its dependencies installed (`pip install -e .`): torch (CUDA build),
torchvision, open_clip_torch (model construction only), ray[data,train], pyarrow, safetensors,
pyyaml, pillow, tqdm. It prints a table and writes results.json and report.md to --out.

Design decisions:
- The models, the authors'-style step and the FLOP count of a step are the CPU benchmark's
  (`real_size.py`), run here on the GPU, so the two scripts measure the same thing.
- The pipeline part runs in a child process with a timeout, so a stuck cluster costs its cap and
  not the whole check; every other part is a timed loop of `--seconds` after a warm-up.
- `--tiny` runs every part on the CPU with the tiny test models (32 px, 50 classes): the check
  of the script itself, not a measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cost import count_gflops, images_per_second, no_mha_fastpath, start_benchmark, step_rate, sync
from real_size import RealModels, authors_step, real_models
from torch.utils.flop_counter import FlopCounterMode

REAL = dict(
    teacher="ViT-L-14",
    student="ViT-B-16",
    image_size=224,
    n_ctx=4,
    student_depth=9,
    teacher_depth=9,
    classes=1000,
    teacher_batch=256,
    student_batch=256,
    authors_batch=8,
    seconds=20.0,
    pipeline_images=8192,
    dtd_images=2820,
    pipeline_epochs=3,
    pipeline_timeout=240,
    jpeg_size=(500, 375),
)
TINY = dict(
    teacher="tiny-vit-teacher",
    student="tiny-vit-student",
    image_size=32,
    n_ctx=2,
    student_depth=2,
    teacher_depth=2,
    classes=50,
    teacher_batch=16,
    student_batch=16,
    authors_batch=8,
    seconds=1.0,
    pipeline_images=256,
    dtd_images=64,
    pipeline_epochs=2,
    pipeline_timeout=480,
    jpeg_size=(56, 48),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny models: check the script in seconds")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's peak (H100 SXM bf16 dense: 989)"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        default=["teacher", "student", "pipeline", "dtd", "authors"],
        choices=["teacher", "student", "pipeline", "dtd", "authors"],
    )
    p.add_argument("--seconds", type=float, help="timed seconds per loop part (default 20; tiny 1)")
    p.add_argument("--pipeline-child", choices=["pipeline", "dtd"], help=argparse.SUPPRESS)
    p.add_argument("--out", default="runs/gpu_check")
    return p.parse_args(argv)


def settings(args) -> dict:
    s = dict(TINY if args.tiny else REAL)
    if args.seconds is not None:
        s["seconds"] = args.seconds
    s["device"] = "cpu" if args.tiny else "cuda"
    s["dtype"] = None if args.tiny else torch.bfloat16
    return s


# ---- FLOPs ----


def step_gflops(m: RealModels, batch_size: int = 2) -> float:
    """GFLOPs per image of the student's step at `batch_size` (≥ 2: the projector has batch norm):
    forward, loss, backward (the optimiser's elementwise update is not a matmul and is not counted)."""
    from promptkd_ray.core.step import distill_step

    device = m.class_vectors.device
    size = m.batches[0].shape[-1]
    images = torch.randn(batch_size, 3, size, size, device=device)
    features = torch.nn.functional.normalize(
        torch.randn(batch_size, m.class_vectors.shape[1], device=device), dim=-1
    )
    with no_mha_fastpath(), FlopCounterMode(display=False) as counter:
        distill_step(m.student, images, features, m.class_vectors, m.optimizer, m.loss, 100.0)
    return counter.get_total_flops() / 1e9 / batch_size


def text_gflops(m: RealModels, classnames: list) -> float:
    """GFLOPs of the teacher's prompted text forward over `classnames` (all of them, once)."""
    with torch.inference_mode(), no_mha_fastpath(), FlopCounterMode(display=False) as counter:
        m.teacher.encode_text(classnames)
    return counter.get_total_flops() / 1e9


# ---- parts ----


def part_teacher(m: RealModels, s: dict) -> dict:
    rate = images_per_second(
        m.teacher.encode_image,
        s["image_size"],
        s["teacher_batch"],
        s["device"],
        seconds=s["seconds"],
        dtype=s["dtype"],
    )
    return {"batch": s["teacher_batch"], "images_per_s": rate}


def part_student(m: RealModels, s: dict) -> dict:
    from promptkd_ray.core.step import distill_step

    b, d = s["student_batch"], m.class_vectors.shape[1]
    images = torch.randn(b, 3, s["image_size"], s["image_size"], device=s["device"])
    features = torch.nn.functional.normalize(torch.randn(b, d, device=s["device"]), dim=-1)

    def step():
        distill_step(
            m.student, images, features, m.class_vectors, m.optimizer, m.loss, 100.0, autocast=s["dtype"]
        )

    return {"batch": b, "images_per_s": step_rate(step, b, s["device"], s["seconds"])}


def part_authors(m: RealModels, s: dict, classnames: list) -> dict:
    b = s["authors_batch"]
    images = torch.randn(b, 3, s["image_size"], s["image_size"], device=s["device"])
    parts = []

    def step():
        parts.append(authors_step(m, images, classnames, autocast=s["dtype"], sync=lambda: sync(s["device"])))

    rate = step_rate(step, b, s["device"], s["seconds"])
    parts = parts[1:]  # the first is the warm-up
    mean = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
    return {"batch": b, "images_per_s": rate, "text_share": mean["text"] / mean["total"]}


def write_jpegs(root: Path, count: int, classes: int, size: tuple) -> Path:
    """`count` JPEGs (64 distinct ones, repeated) in the split-JSON layout under `root/bench`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "bench" / "images").mkdir(parents=True, exist_ok=True)
    distinct = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            buffer, "JPEG", quality=90
        )
        distinct.append(buffer.getvalue())
    rows = []
    for i in range(count):
        (root / "bench" / "images" / f"{i:05d}.jpg").write_bytes(distinct[i % 64])
        rows.append([f"{i:05d}.jpg", i % classes, f"class {i % classes}"])
    (root / "bench" / "split.json").write_text(json.dumps({"train": rows, "test": rows[:classes]}))
    return root


def pipeline_child(s: dict, tiny: bool, part: str) -> dict:
    """The Stage II job on one Train worker and one teacher actor (half a GPU each on a GPU); part
    "dtd": a DTD-sized image set held in the worker's memory (`data.in_memory=always`)."""
    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.distill import run_distillation

    gpu = not tiny
    images = s["dtd_images"] if part == "dtd" else s["pipeline_images"]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp) / "data", images, min(s["classes"], 100), s["jpeg_size"])
        job = distill_job_from_dict(
            {
                "name": "gpu_check_pipeline",
                "storage_path": str(Path(tmp) / "runs"),
                "teacher": {"spec": s["teacher"]},
                "student": {"spec": s["student"], "n_ctx": s["n_ctx"], "depth": s["student_depth"]},
                "data": {
                    "source": "split_json",
                    "root": str(root),
                    "dataset": "bench",
                    "image_folder": "images",
                    "split_file": "split.json",
                    "heldout_images": 0,
                    "decode_batch_size": 64,
                    "in_memory": "always" if part == "dtd" else "never",
                },
                "teacher_pool": {
                    "size": 1,
                    "batch_size": s["teacher_batch"],
                    "num_gpus": 0.5 if gpu else 0.0,
                    "num_cpus": 2 if gpu else 1,
                },
                "train": {
                    "epochs": s["pipeline_epochs"],
                    "batch_size": s["student_batch"],
                    "num_workers": 1,
                    "use_gpu": gpu,
                    "resources_per_worker": {"GPU": 0.5} if gpu else {},
                    "cpus_per_worker": 4 if gpu else 1,
                    "optimizer": "sgd",
                    "lr": 0.005,
                    "log_every": 10**6,
                    "checkpoints_to_keep": 1,
                },
                "ray": {"progress_bars": False, "num_cpus": (os.cpu_count() or 2) if gpu else 4},
            }
        )
        history = run_distillation(job).history
    later = history[1:] or history
    best = max(later, key=lambda e: e["images"] / e["epoch_seconds"])
    return {
        "images_per_epoch": images,
        "epoch_s": best["epoch_seconds"],
        "epochs": len(history),
        "images_per_s": best["images"] / best["epoch_seconds"],
        "after_first_batch_images_per_s": best["images_per_s"],
        "startup_s": best["startup_s"],
    }


def part_pipeline(args, s: dict, out: Path, part: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pipeline-child", part, "--out", str(out)]
    cmd += ["--tiny"] if args.tiny else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=s["pipeline_timeout"], check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {s['pipeline_timeout']} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads((out / f"{part}.json").read_text())


# ---- report ----


def report(r: dict) -> str:
    peak = r["peak_tflops"] * 1e12
    f = r["gflops"]
    rows = [
        ("teacher image forward", r.get("teacher"), f["teacher"]),
        ("student step", r.get("student"), f["student_step"]),
        ("pipeline: 1 teacher actor + 1 Train worker", r.get("pipeline"), f["teacher"] + f["student_step"]),
        ("DTD-sized epoch, images in memory", r.get("dtd"), f["teacher"] + f["student_step"]),
        ("authors'-style loop", r.get("authors"), f["authors_step"]),
    ]
    lines = [
        f"# GPU check ({r['device']}; {r['teacher_spec']} → {r['student_spec']}, {r['classes']} classes, "
        f"{r['dtype']}; peak {r['peak_tflops']:g} TFLOP/s assumed)",
        "",
        "| part | batch | images/s | GFLOP / image | MFU |",
        "|---|---|---|---|---|",
    ]
    for name, part, gflops in rows:
        if part is None:
            continue
        if "error" in part:
            lines.append(f"| {name} | | failed: {part['error']} | | |")
            continue
        mfu = part["images_per_s"] * gflops * 1e9 / peak
        lines.append(
            f"| {name} | {part.get('batch', '')} | {part['images_per_s']:.1f} | {gflops:.4g} | "
            f"{100 * mfu:.1f} % |"
        )
    if r.get("pipeline") and "error" not in r["pipeline"]:
        p = r["pipeline"]
        lines += [
            "",
            f"Pipeline: best epoch after the first, {p['images_per_epoch']} images per epoch, start-up "
            f"{p['startup_s']:.1f} s included; {p['after_first_batch_images_per_s']:.1f} images/s after its "
            "first batch.",
        ]
    d, t, st = r.get("dtd") or {}, r.get("teacher") or {}, r.get("student") or {}
    if d and "error" not in d and "images_per_s" in t and "images_per_s" in st:
        limit = d["images_per_epoch"] * (1 / t["images_per_s"] + 1 / st["images_per_s"])
        lines.append(
            f"DTD-sized epoch ({d['images_per_epoch']} images, best after the first): {d['epoch_s']:.2f} s; "
            f"its limit (teacher forward + student step, back to back) {limit:.2f} s: "
            f"× {d['epoch_s'] / limit:.2f}."
        )
    if r.get("authors") and r.get("student") and "error" not in r["authors"]:
        speedup = r["student"]["images_per_s"] / r["authors"]["images_per_s"]
        lines += [
            f"Authors'-style loop: the text tower takes {100 * r['authors']['text_share']:.0f} % of its step; "
            f"student step ÷ authors'-style loop: × {speedup:.1f}."
        ]
    lines += ["", f"Total {r['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    s = settings(args)
    if args.pipeline_child:
        part = args.pipeline_child
        (out / f"{part}.json").write_text(json.dumps(pipeline_child(s, args.tiny, part)))
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("error: no GPU is visible; use --tiny to check the script on the CPU.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    m = real_models(
        batch_size=1,
        images=1,
        classes=s["classes"],
        teacher_depth=s["teacher_depth"],
        teacher=s["teacher"],
        student=s["student"],
        image_size=s["image_size"],
        n_ctx=s["n_ctx"],
        student_depth=s["student_depth"],
        device=s["device"],
    )
    classnames = [f"class {i}" for i in range(s["classes"])]
    step = step_gflops(m)
    teacher = count_gflops(m.teacher.encode_image, s["image_size"], s["device"])
    r = {
        "device": torch.cuda.get_device_name() if s["device"] == "cuda" else "cpu",
        "teacher_spec": s["teacher"],
        "student_spec": s["student"],
        "classes": s["classes"],
        "dtype": str(s["dtype"] or "fp32"),
        "peak_tflops": args.peak_tflops,
        "gflops": {
            "teacher": teacher,
            "student_step": step,
            "authors_step": teacher + step + text_gflops(m, classnames) / s["authors_batch"],
        },
    }
    for part in args.parts:
        print(f"{time.strftime('%H:%M:%S')} {part} …", flush=True)
        if part == "teacher":
            r["teacher"] = part_teacher(m, s)
        elif part == "student":
            r["student"] = part_student(m, s)
        elif part == "authors":
            r["authors"] = part_authors(m, s, classnames)
        elif part in ("pipeline", "dtd"):
            r[part] = part_pipeline(args, s, out, part)
    r["total_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(r, indent=1) + "\n")
    text = report(r)
    (out / "report.md").write_text(text)
    print(text)
    return 1 if any("error" in (r.get(p) or {}) for p in args.parts) else 0


if __name__ == "__main__":
    sys.exit(main())
