"""Inference cost of student vs teacher image towers (like PromptKD's Table 7), measured in one run.

    python benchmarks/inference_cost.py                       # tiny models, CPU (this machine)
    python benchmarks/inference_cost.py --teacher ViT-L-14-quickgelu --student ViT-B-16-quickgelu \
        --depth 9 --batch-size 256 --dtype bf16               # real sizes, random init, on a GPU

Prints a Markdown table (params, trainable params, GFLOPs per image, images/s, speed ratio) and
writes it to --out if given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from cost import markdown_table, measure

from promptkd_ray.core.models import build_student, build_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="tiny-vit-teacher")
    p.add_argument("--student", default="tiny-vit-student")
    p.add_argument("--depth", type=int, default=3, help="student prompt depth")
    p.add_argument("--teacher-depth", type=int, default=0, help="teacher vision prompt depth")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--out")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    teacher = build_teacher(args.teacher, vision_depth=args.teacher_depth)
    student = build_student(args.student, teacher_dim=teacher.embed_dim, depth=args.depth)
    size_t = int(teacher.image_encoder.visual.image_size[0])
    size_s = int(student.image_encoder.visual.image_size[0])
    rows = [
        measure(
            f"student {args.student} (depth {args.depth})",
            student,
            size_s,
            args.batch_size,
            device,
            args.seconds,
            dtype,
        ),
        measure(f"teacher {args.teacher}", teacher, size_t, args.batch_size, device, args.seconds, dtype),
    ]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    table = markdown_table(rows, f"{name}, batch {args.batch_size}, {args.dtype}")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
