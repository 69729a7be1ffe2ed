"""Real sizes on the CPU: the authors'-style step against ours per image, and the peak memory of a
trainer worker and of a teacher actor; measured in one run (ratios only mean something within it).

    models    random-init ViT-L-14 teacher, PromptSRC-style (prompts on both towers, depth 9, n_ctx 4),
              and ViT-B-16 student (depth 9, n_ctx 4, mlp2 projector); 224 px, batch B, N = 1,000
              classes, fp32, torch threads = the machine's cores.
    authors'  one step = the teacher's image forward + the teacher's TEXT forward over all N class
              prompts (the official trainer recomputes them every step, docs/protocol.md) + the student's
              step (forward, backward, SGD).
    ours      the trainer's step = the student's step with stored class vectors and the teacher
              features the pool sent; the pool's teacher image forward is timed on its own, so
              "ours, all compute" = pool + trainer, the like-for-like count.
    memory    peak RSS (VmHWM) of a fresh process that runs what a Train worker runs (build the
              student, S steps on stored features) and of one that runs what a teacher actor runs
              (`TeacherPredictor` of the pool on the ViT-L-14 spec, S batches of uint8 views); and of
              one that only imports the same modules, for reference.

    python benchmarks/real_size.py --out runs/real_size
    python benchmarks/real_size.py --classes 100 --images 8 --out /tmp/rs     # a quicker look

Design decisions:
- The model set-up (`real_models`) is shared with soft_label_cache.py part (b).
- The authors'-style text pass is warmed up on a few classes (same sequence length, so the same
  kernels), then timed at all N classes: one full-size text pass costs minutes on a small CPU.
- Memory is measured in child processes so that each figure is one role's own peak, not this
  process's (which holds every model at once); they start once the steps are timed, and
  each writes its figure to `probe_ROLE.json` in --out as soon as it has it.
- Each pass and step is logged as it completes, and CPU seconds are recorded beside wall seconds:
  on a shared machine a long run's wall times move with other load, its CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from cost import start_benchmark

TEACHER, STUDENT = "ViT-L-14", "ViT-B-16"
TEACHER_DEPTH, N_CTX, STUDENT_DEPTH, PROJECTOR = 9, 4, 9, "mlp2"
log = logging.getLogger("real_size")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=16, help="images per timed pass of ours (whole batches)")
    p.add_argument("--classes", type=int, default=1000, help="classes the authors' step encodes every step")
    p.add_argument(
        "--authors-steps", type=int, default=1, help="timed authors'-style steps (after a warm-up)"
    )
    p.add_argument("--memory-steps", type=int, default=2, help="steps / batches each memory probe runs")
    p.add_argument("--probe", choices=["trainer", "teacher", "imports"], help=argparse.SUPPRESS)
    p.add_argument("--out", default="runs/real_size")
    return p.parse_args(argv)


@dataclass
class RealModels:
    teacher: torch.nn.Module
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    class_vectors: torch.Tensor  # [N, d], the stored class vectors
    loss: object
    batches: list  # [B, 3, 224, 224] float32 model inputs


def real_models(
    batch_size: int,
    images: int,
    classes: int = 1000,
    teacher_depth: int = 0,
    teacher: str = TEACHER,
    student: str = STUDENT,
    image_size: int = 224,
    n_ctx: int = N_CTX,
    student_depth: int = STUDENT_DEPTH,
    device: str = "cpu",
) -> RealModels:
    """The teacher and student (random init unless the specs name weights; the real sizes by
    default), the recipe's SGD and random batches, on `device`."""
    import torch.nn.functional as F

    from promptkd_ray.core.loss_config import LOSS_PRESETS
    from promptkd_ray.core.models import build_student, build_teacher

    torch.manual_seed(0)
    t = build_teacher(
        teacher, vision_depth=teacher_depth, text_depth=teacher_depth, n_ctx=n_ctx, device=device
    )
    t = t.to(device).eval()
    s = build_student(
        student, teacher_dim=t.embed_dim, n_ctx=n_ctx, depth=student_depth, projector=PROJECTOR, device=device
    )
    optimizer = torch.optim.SGD(s.trainable_parameters(), lr=0.005, momentum=0.9)
    class_vectors = F.normalize(torch.randn(classes, t.embed_dim, device=device), dim=-1)
    batches = [
        torch.randn(batch_size, 3, image_size, image_size, device=device)
        for _ in range(max(1, images // batch_size))
    ]
    return RealModels(t, s, optimizer, class_vectors, LOSS_PRESETS["promptkd"], batches)


def teacher_pass(m: RealModels) -> list:
    with torch.inference_mode():
        return [m.teacher.encode_image(b).float() for b in m.batches]


def student_pass(m: RealModels, features: list) -> None:
    from promptkd_ray.core.step import distill_step

    for images, feats in zip(m.batches, features):
        distill_step(m.student, images, feats.clone(), m.class_vectors, m.optimizer, m.loss, 100.0)


def authors_step(
    m: RealModels, images: torch.Tensor, classnames: list, autocast=None, sync=lambda: None
) -> dict:
    """One authors'-style step; wall seconds of its three parts and of the whole, and the whole's
    CPU seconds of this process (`autocast`: e.g. torch.bfloat16 on a GPU; `sync` waits for the device)."""
    from promptkd_ray.core.step import distill_step

    mixed = torch.autocast(images.device.type, dtype=autocast or torch.float32, enabled=autocast is not None)
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode(), mixed:
        features = m.teacher.encode_image(images).float()
    sync()
    t1 = time.perf_counter()
    with torch.inference_mode(), mixed:
        class_vectors = m.teacher.encode_text(classnames).float()
    sync()
    t2 = time.perf_counter()
    distill_step(
        m.student,
        images,
        features.clone(),
        class_vectors.clone(),
        m.optimizer,
        m.loss,
        100.0,
        autocast=autocast,
    )
    sync()
    t3 = time.perf_counter()
    return {
        "image": t1 - t0,
        "text": t2 - t1,
        "student": t3 - t2,
        "total": t3 - t0,
        "cpu_total": time.process_time() - c0,
    }


def timings(args) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    m = real_models(args.batch_size, args.images, args.classes, teacher_depth=TEACHER_DEPTH)
    n = sum(b.shape[0] for b in m.batches)
    classnames = [f"class {i}" for i in range(args.classes)]
    pool, trainer, cpu = [], [], []

    def ours_pass():
        c0, t0 = time.process_time(), time.perf_counter()
        features = teacher_pass(m)
        t1 = time.perf_counter()
        student_pass(m, features)
        pool.append((t1 - t0) / n)
        trainer.append((time.perf_counter() - t1) / n)
        cpu.append((time.process_time() - c0) / n)
        log.info("ours: pool %.3f + trainer %.3f s per image (CPU %.3f s)", pool[-1], trainer[-1], cpu[-1])

    # ours: a warm-up, then two passes before the authors' steps and one after; best of each (a
    # shared machine's load only ever slows a pass down, and it changes over a long run)
    student_pass(m, teacher_pass(m))
    log.info("models built and warmed up")
    ours_pass()
    ours_pass()
    # authors': warm-up on a few classes, then full steps
    authors_step(m, m.batches[0], classnames[:8])
    steps = []
    for i in range(args.authors_steps):
        steps.append(authors_step(m, m.batches[i % len(m.batches)], classnames))
        log.info("authors' step: %s", {k: round(v, 3) for k, v in steps[-1].items()})
    ours_pass()
    best = min(steps, key=lambda s: s["total"])
    b = args.batch_size
    pool_s, trainer_s = min(pool), min(trainer)
    authors = {k: v / b for k, v in best.items()}
    return {
        "batch_size": b,
        "images": n,
        "classes": args.classes,
        "threads": torch.get_num_threads(),
        "authors_steps": len(steps),
        "authors_s_per_image": authors,
        "pool_s_per_image": pool_s,
        "trainer_s_per_image": trainer_s,
        "ours_all_s_per_image": pool_s + trainer_s,
        "ours_cpu_s_per_image": min(cpu),
        "ratio_vs_ours_all": authors["total"] / (pool_s + trainer_s),
        "ratio_vs_trainer": authors["total"] / trainer_s,
        "cpu_ratio_vs_ours_all": authors["cpu_total"] / min(cpu),
    }


# ---- memory probes (each runs in its own process) ----


def probe(role: str, batch_size: int, steps: int, classes: int) -> dict:
    import numpy as np

    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.loss_config import LOSS_PRESETS
    from promptkd_ray.core.models import build_student
    from promptkd_ray.core.step import distill_step
    from promptkd_ray.orchestration.teacher_pool import TeacherPredictor

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    if role == "trainer":
        import torch.nn.functional as F

        student = build_student(
            STUDENT, teacher_dim=768, n_ctx=N_CTX, depth=STUDENT_DEPTH, projector=PROJECTOR
        )
        optimizer = torch.optim.SGD(student.trainable_parameters(), lr=0.005, momentum=0.9)
        class_vectors = F.normalize(torch.randn(classes, 768), dim=-1)
        for _ in range(steps):
            features = F.normalize(torch.randn(batch_size, 768), dim=-1)
            distill_step(
                student,
                torch.randn(batch_size, 3, 224, 224),
                features,
                class_vectors,
                optimizer,
                LOSS_PRESETS["promptkd"],
                100.0,
            )
    elif role == "teacher":
        predictor = TeacherPredictor(ModelRef("zeroshot", TEACHER), precision="auto")
        rng = np.random.default_rng(0)
        for _ in range(steps):
            predictor({"image": rng.integers(0, 255, (batch_size, 224, 224, 3), dtype=np.uint8)})
    return {"role": role, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory: Linux's VmHWM (its own address space since exec; the
    `ru_maxrss` of a child also counts its parent's size at fork), else `ru_maxrss`."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_probes(args) -> dict:
    """Start one child process per role."""
    children = {}
    for role in ("imports", "trainer", "teacher"):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--probe",
            role,
            "--batch-size",
            str(args.batch_size),
            "--memory-steps",
            str(args.memory_steps),
            "--classes",
            str(args.classes),
            "--out",
            args.out,
        ]
        children[role] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return children


def collect_probes(children: dict) -> dict:
    """Peak RSS (MiB) of each role's child process."""
    out = {}
    for role, child in children.items():
        stdout, stderr = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"The {role} memory probe failed: {stderr.strip().splitlines()[-1:]}")
        out[role] = json.loads(stdout.strip().splitlines()[-1])["peak_rss_mib"]
        log.info("peak RSS of the %s probe: %.0f MiB", role, out[role])
    return out


def report(r: dict) -> str:
    t, mem = r["timings"], r["memory"]
    a = t["authors_s_per_image"]
    return "\n".join(
        [
            f"# Real sizes on the CPU (`python benchmarks/real_size.py {' '.join(sys.argv[1:])}`)",
            "",
            f"Random-init {TEACHER} (prompted, depth {TEACHER_DEPTH}) → {STUDENT} (depth {STUDENT_DEPTH}, n_ctx {N_CTX}, "
            f"{PROJECTOR}), 224 px, batch {t['batch_size']}, {t['classes']} classes, fp32, {t['threads']} threads; "
            f"{r['cores']} cores, load average {r['load_average'][0]:.1f} → {r['load_average'][1]:.1f}.",
            "",
            "| step | s / image |",
            "|---|---|",
            f"| authors'-style: teacher image forward | {a['image']:.3f} |",
            f"| authors'-style: teacher text forward over {t['classes']} classes (÷ batch) | {a['text']:.3f} |",
            f"| authors'-style: student step | {a['student']:.3f} |",
            f"| **authors'-style step, total** (best of {t['authors_steps']}) | **{a['total']:.3f}** |",
            f"| ours: teacher pool, image forward | {t['pool_s_per_image']:.3f} |",
            f"| ours: trainer step (stored class vectors, pool features) | {t['trainer_s_per_image']:.3f} |",
            f"| **ours, all compute** (pool + trainer) | **{t['ours_all_s_per_image']:.3f}** |",
            "",
            f"- authors'-style ÷ ours (all compute) per image: × {t['ratio_vs_ours_all']:.2f}",
            f"- authors'-style ÷ ours (trainer step only) per image: × {t['ratio_vs_trainer']:.2f}",
            f"- the same in CPU seconds of the process (robust to other load on the machine): authors'-style "
            f"{a['cpu_total']:.3f} vs ours, all compute, {t['ours_cpu_s_per_image']:.3f} per image: "
            f"× {t['cpu_ratio_vs_ours_all']:.2f}",
            f"- wall times are best of {t['authors_steps']} authors'-style step(s) and of 3 passes of ours "
            f"({t['images']} images each)",
            "",
            f"Peak RSS (fresh process each, batch {t['batch_size']}): Train worker {mem['trainer']:.0f} MiB; "
            f"teacher actor ({TEACHER}, `TeacherPredictor`) {mem['teacher']:.0f} MiB; "
            f"imports alone {mem['imports']:.0f} MiB.",
            "",
        ]
    )


def main(argv=None) -> int:
    args, out = start_benchmark(parse_args, argv)
    if args.probe:  # also to a file, so that a figure survives an interrupted run
        text = json.dumps(probe(args.probe, args.batch_size, args.memory_steps, args.classes))
        (out / f"probe_{args.probe}.json").write_text(text + "\n")
        print(text)
        return 0
    load_before = os.getloadavg()[0]
    timed = timings(
        args
    )  # the memory probes start afterwards: on a small machine they would slow the timed steps
    results = {
        "timings": timed,
        "memory": collect_probes(start_probes(args)),
        "cores": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = report(results)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
