"""Inference cost of image towers (the paper's Table 7): parameters, GFLOPs and images/s.

GFLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` for one image (matmuls and
convolutions, counted as 2·MACs; attention through its plain path, which the counter sees); images/s is measured on the same machine in the same run for
every model, after warm-up, so rows compare as ratios. The student row includes its prompts and
projector; the teacher row is its image tower (its text side is precomputed class vectors).
`start_benchmark` is every benchmark script's common start (logging, arguments, --out folder).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class CostRow:
    name: str
    params_m: float  # parameters used at inference, millions
    trainable_m: float  # trainable parameters, millions
    gflops: float  # per image
    images_per_s: float


def count_gflops(encode, image_size: int, device: str) -> float:
    """GFLOPs of one image through `encode`, attention included (`no_mha_fastpath`)."""
    images = torch.zeros(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), no_mha_fastpath(), FlopCounterMode(display=False) as counter:
        encode(images)
    return counter.get_total_flops() / 1e9


@contextlib.contextmanager
def no_mha_fastpath():
    """Count through nn.MultiheadAttention's plain path: without grad its fused fast path is one op
    that FlopCounterMode does not count (its projections and attention, a third of a ViT's FLOPs)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def images_per_second(
    encode,
    image_size: int,
    batch_size: int,
    device: str,
    seconds: float = 2.0,
    dtype: torch.dtype | None = None,
) -> float:
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    with (
        torch.no_grad(),
        torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        return step_rate(lambda: encode(images), batch_size, device, seconds)


def step_rate(step, batch: int, device: str, seconds: float) -> float:
    """Images/s of `step` (one batch of `batch` images) over `seconds` (at least one step), after
    one warm-up step."""
    step()
    sync(device)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        step()
        done += batch
    sync(device)
    return done / (time.perf_counter() - start)


def measure(
    name: str,
    model: torch.nn.Module,
    image_size: int,
    batch_size: int,
    device: str,
    seconds: float = 2.0,
    dtype: torch.dtype | None = None,
) -> CostRow:
    model = model.to(device).eval()
    params = sum(p.numel() for p in model.parameters() if not _is_text(name, p, model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return CostRow(
        name=name,
        params_m=params / 1e6,
        trainable_m=trainable / 1e6,
        gflops=count_gflops(model.encode_image, image_size, device),
        images_per_s=images_per_second(model.encode_image, image_size, batch_size, device, seconds, dtype),
    )


def _is_text(name, p, model) -> bool:
    text = getattr(model, "text_encoder", None)
    return text is not None and any(p is q for q in text.parameters())


def markdown_table(rows: list[CostRow], device: str) -> str:
    base = rows[-1].images_per_s
    lines = [
        f"Inference cost on {device} (images/s measured in one run; ratio to the last row)",
        "",
        "| model | params (M) | trainable (M) | GFLOPs / image | images/s | speed ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params_m:.2f} | {r.trainable_m:.3f} | {r.gflops:.3f} | "
            f"{r.images_per_s:.1f} | {r.images_per_s / base:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def start_benchmark(parse_args, argv=None):
    """A benchmark script's first lines: Ray's auth off, timestamped INFO logging, its arguments and
    its --out folder (created). → (args, out)."""
    import logging
    import os
    from pathlib import Path

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out


def write_outputs(out, text: str, markdown: str, table: str, rows: list) -> None:
    """A benchmark's results: `text` as out/markdown (and printed), `rows` (dicts) as the CSV out/table."""
    import csv

    (out / markdown).write_text(text)
    with (out / table).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(text)
