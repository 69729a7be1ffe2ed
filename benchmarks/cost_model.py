"""The cost model of Stage II at scale: full ImageNet × E epochs, stage by stage, with and without
the soft-label cache, as a Markdown table computed from named inputs.

    python benchmarks/cost_model.py                                   # the defaults below
    python benchmarks/cost_model.py --set mfu_teacher=0.5 --set hours=2
    python benchmarks/cost_model.py --inputs my_numbers.yaml          # any subset of the inputs
    python benchmarks/cost_model.py --measure-decode                  # measure decode here, then the table
    python benchmarks/cost_model.py --count-flops                     # recount the FLOPs, then the table

Stages (rate per device; devices to finish in `hours`; hours with the devices of the shipped job):
    decode     JPEG → random view (uint8 224²) per CPU core: `data/decode.py`, measured here.
    teacher    ViT-L-14 image forward per GPU = peak × MFU ÷ FLOPs per image (FLOPs counted by
               FlopCounterMode; MFU assumed).
    student    the ViT-B-16 student's step (forward + backward to the prompts) per GPU, the same way.
    transfer   object-store bytes per image ÷ an assumed effective per-node network rate: streaming
               moves the view decode → teacher and view + feature teacher → trainer; cached moves
               the view decode → trainer (the stored feature is read from Parquet, also counted).
With the soft-label cache the teacher runs once per view slot (K views of every image, decoded once
each), and every run then trains on the stored features with no teacher; the table shows the build
and one training run.

Design decisions:
- Every input has a name, a value and a source ("measured …", "counted …" or "assumed …"); the table
  repeats the source beside each rate, so an assumption is never hidden in a number.
- The bottleneck is the stage that takes longest with the given devices: stages run concurrently
  in a streaming run, so the slowest one sets the run's time.
- `compute(inputs)` is pure arithmetic (tested); measuring and counting are opt-in flags.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

VIEW_BYTES = 224 * 224 * 3  # one uint8 view


@dataclass(frozen=True)
class Inputs:
    images: int = 1_281_167  # ImageNet-1k train
    epochs: int = 20
    hours: float = 1.0  # the target wall time the "devices" column is sized for
    cache_views: int = 20  # K view slots of the soft-label cache (= epochs: every epoch a fresh view)
    decode_per_core: float = 0.0  # images/s per CPU core (DEFAULTS holds the measured value)
    decode_source: str = ""
    teacher_gflops: float = 0.0  # per image, ViT-L-14 image forward at 224 px
    student_step_gflops: float = 0.0  # per image, forward + backward of the student's step
    flops_source: str = ""
    peak_tflops: float = 989.0  # H100 SXM bf16 dense, the vendor's figure
    mfu_teacher: float = 0.40  # assumed: batched bf16 inference of a ViT-L
    mfu_student: float = 0.30  # assumed: bf16 training step, batch 256 per GPU
    feature_bytes: int = 768 * 2  # fp16 teacher feature per view
    network_gbytes_per_s: float = 3.0  # assumed effective object-store transfer per node (of a 100 Gb/s NIC)
    # the shipped job's devices (jobs/imagenet_full.yaml on cluster.yaml): the "hours" column
    decode_cores: int = 8 * 32  # 8 × c6i.8xlarge
    teacher_gpus: int = 16  # teacher_pool.max_size
    student_gpus: int = 4  # train.num_workers
    nodes: int = 2 + 4 + 8  # teacher + trainer + decode nodes that move rows


# Measured / counted by this script's flags on the project's 2-core CPU machine (README, "The cost model").
DEFAULTS = dict(
    decode_per_core=346.1,
    decode_source="measured: one core, CPU time (--measure-decode)",
    teacher_gflops=157.95,
    student_step_gflops=68.53,
    flops_source="counted by FlopCounterMode (--count-flops)",
)


def load_inputs(path: "str | None" = None, overrides: "list[str] | None" = None) -> Inputs:
    """Inputs: the defaults, then a YAML mapping at `path`, then `name=value` overrides."""
    values = dict(DEFAULTS)
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of input names to values.")
        values.update(data)
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"An override must be NAME=VALUE, got {item!r}.")
        values[name.strip()] = yaml.safe_load(value)
    known = {f.name: f for f in fields(Inputs)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown cost-model input(s) {unknown}; known: {sorted(known)}.")
    typed = {
        k: (float(v) if known[k].type == "float" else int(v) if known[k].type == "int" else v)
        for k, v in values.items()
    }
    inputs = replace(Inputs(), **typed)
    missing = [
        n for n in ("decode_per_core", "teacher_gflops", "student_step_gflops") if getattr(inputs, n) <= 0
    ]
    if missing:
        raise ValueError(
            f"The cost model needs positive {missing}: measure them (--measure-decode, "
            "--count-flops) or give them (--set NAME=VALUE)."
        )
    return inputs


@dataclass(frozen=True)
class Stage:
    name: str
    work: float  # images (or bytes) the stage must process
    rate: float  # per device per second
    unit: str  # "images/s" or "GB/s"
    device: str  # "core", "GPU", "node"
    given: int  # devices of the shipped job
    source: str

    def devices_for(self, hours: float) -> int:
        return math.ceil(self.work / (self.rate * hours * 3600))

    def hours_with(self, devices: int) -> float:
        return self.work / (self.rate * devices * 3600)


def compute(x: Inputs) -> dict[str, list[Stage]]:
    """The stages of a streaming run, of the cache build and of a cached run (pure arithmetic)."""
    flops_src = f"{x.flops_source}; peak {x.peak_tflops:g} TFLOP/s (bf16 dense)"
    teacher_rate = x.peak_tflops * 1e12 * x.mfu_teacher / (x.teacher_gflops * 1e9)
    student_rate = x.peak_tflops * 1e12 * x.mfu_student / (x.student_step_gflops * 1e9)
    net = x.network_gbytes_per_s * 1e9
    seen = x.images * x.epochs
    stream_bytes = VIEW_BYTES + (VIEW_BYTES + x.feature_bytes)
    cached_bytes = VIEW_BYTES + x.feature_bytes
    views = x.images * x.cache_views

    def decode(work):
        return Stage(
            "decode + augment", work, x.decode_per_core, "images/s", "core", x.decode_cores, x.decode_source
        )

    def teacher(work):
        return Stage(
            "teacher (ViT-L-14 image forward)",
            work,
            teacher_rate,
            "images/s",
            "GPU",
            x.teacher_gpus,
            f"{x.teacher_gflops:.1f} GFLOP/image × MFU {x.mfu_teacher:g} (assumed); {flops_src}",
        )

    def student(work):
        return Stage(
            "student step (ViT-B-16, fwd + bwd)",
            work,
            student_rate,
            "images/s",
            "GPU",
            x.student_gpus,
            f"{x.student_step_gflops:.1f} GFLOP/image × MFU {x.mfu_student:g} (assumed); {flops_src}",
        )

    def transfer(work, per_image):
        return Stage(
            f"object-store transfer ({per_image / 1e3:.1f} kB/image)",
            work * per_image / 1e9,
            net / 1e9,
            "GB/s",
            "node",
            x.nodes,
            f"assumed {x.network_gbytes_per_s:g} GB/s effective per node",
        )

    return {
        "streaming": [decode(seen), teacher(seen), student(seen), transfer(seen, stream_bytes)],
        "cache build (once)": [decode(views), teacher(views), transfer(views, VIEW_BYTES + x.feature_bytes)],
        "cached run (each)": [decode(seen), student(seen), transfer(seen, cached_bytes)],
    }


def markdown(x: Inputs, plans: dict[str, list[Stage]]) -> str:
    lines = [
        f"Full ImageNet ({x.images:,} images) × {x.epochs} epochs; devices to finish in {x.hours:g} h on "
        f"H100s; hours with the shipped job's device counts, as H100s ({x.decode_cores} decode cores, "
        f"{x.teacher_gpus} teacher GPUs, {x.student_gpus} student GPUs, {x.nodes} nodes); cache of "
        f"K = {x.cache_views} views.",
        "",
        "| plan | stage | rate per device | source | devices for "
        f"{x.hours:g} h | hours with the shipped devices |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for plan, stages in plans.items():
        for s in stages:
            rate = f"{s.rate:,.1f} {s.unit} per {s.device}"
            lines.append(
                f"| {plan} | {s.name} | {rate} | {s.source} | {_count(s.devices_for(x.hours), s.device)} | "
                f"{s.hours_with(s.given):.2f} ({_count(s.given, s.device)}) |"
            )
        slowest = max(stages, key=lambda s: s.hours_with(s.given))
        gpus = sum(s.devices_for(x.hours) for s in stages if s.device == "GPU")
        summary.append(
            f"- {plan}: bottleneck **{slowest.name}** ({slowest.hours_with(slowest.given):.2f} h with "
            f"the shipped devices); {gpus} H100s in all for {x.hours:g} h."
        )
    return "\n".join(lines + [""] + summary) + "\n"


def _count(n: int, device: str) -> str:
    return f"{n:,} {device}{'' if n == 1 else 's'}"


def measure_decode(seconds: float = 5.0) -> float:
    """Images per CPU-second of one core: read an ImageNet-sized JPEG (500 × 375, the set's typical
    size) and render a random train view at 224 px, as the decode tasks do (`data/decode.py`).
    CPU time of this (single-threaded) process, so other load on the machine does not count."""
    import io

    import numpy as np
    from PIL import Image

    from promptkd_ray.data.decode import read_image, render_view
    from promptkd_ray.data.transforms import sample_view

    rng = np.random.default_rng(0)
    y, xx = np.mgrid[0:375, 0:500]
    smooth = np.stack([(xx * 0.5 + y * 0.2) % 256, (y * 0.6) % 256, (xx * 0.3 + 80) % 256], -1)
    pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    done, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        image = read_image(data)
        render_view(image, sample_view(*image.size, rng), 224)
        done += 1
    return done / (time.process_time() - start)


def count_flops() -> tuple[float, float]:
    """GFLOPs per image of the ViT-L-14 image forward and of the student's step (forward +
    backward), counted by FlopCounterMode on random-init models of the real sizes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import step_gflops, teacher_gflops
    from real_size import real_models

    m = real_models(batch_size=2, images=2, classes=1000, teacher_depth=9)
    return teacher_gflops(m.teacher, 224), step_gflops(m, batch_size=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", help="YAML mapping of input names to values")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override one input")
    p.add_argument("--measure-decode", action="store_true", help="measure decode_per_core on this machine")
    p.add_argument(
        "--count-flops", action="store_true", help="count the GFLOPs on random-init real-size models"
    )
    p.add_argument("--out", help="also write the table to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    extra = []
    if args.measure_decode:
        rate = measure_decode()
        print(f"measured decode + view: {rate:.1f} images per CPU-second of one core")
        extra += [
            f"decode_per_core={rate:.1f}",
            "decode_source=measured here (cost_model.py --measure-decode)",
        ]
    if args.count_flops:
        teacher, step = count_flops()
        print(
            f"counted: teacher image forward {teacher:.2f} GFLOP/image, student step {step:.2f} GFLOP/image"
        )
        extra += [
            f"teacher_gflops={teacher:.2f}",
            f"student_step_gflops={step:.2f}",
            "flops_source=counted (FlopCounterMode)",
        ]
    try:
        inputs = load_inputs(args.inputs, extra + args.set)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown(inputs, compute(inputs))
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
