"""Ingest: loose files vs a pack's Parquet shards through Ray Data, and PIL vs torchvision.io decoding.

In one run, on generated photo-like JPEGs (≈ 500 × 375: gradients, blobs, texture and sensor-like
noise, so their sizes are realistic, ≈ 100 KB at quality 92):

    (a) Ray Data images/s, loose files vs the pack (`promptkd-ray pack`) of the same files:
        read only (bytes to the consumer), and read → decode → view, the Stage II decode task
        (`orchestration.pipeline.decode_and_augment`: a seeded RandomResizedCrop + flip view at 224 px);
        best of `--passes` passes each (a shared machine's other load only ever slows a pass down);
    (b) single-core decode images/s of the same bytes to an RGB uint8 array: PIL (`data.decode.read_image`,
        the project's decoder) vs `torchvision.io.decode_image` (libjpeg-turbo on the CPU), also with
        the array turned back into a PIL image (what `render_view` takes); and their pixel agreement:
        max / mean absolute difference of the decoded images and of the 224-px test views, and the
        cosine between the toy teacher's image features of both (its input is 32 px).

Local disk with a warm page cache is the best case for loose files: on object storage each file is
a request (tens of ms), which the shards turn into a few large sequential reads.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/ingest.py --out runs/ingest
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/ingest.py --out /tmp/ingest --images 200 --passes 1  # smoke
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from cost import start_benchmark

log = logging.getLogger("ingest")
VIEW_SIZE = 224


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ingest")
    p.add_argument("--images", type=int, default=2000, help="generated JPEGs")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shard-mb", type=float, default=32.0, help="pack shard size (several shards per core)")
    p.add_argument("--passes", type=int, default=2, help="passes per Ray Data measurement (best is reported)")
    p.add_argument("--decode-images", type=int, default=500, help="images in the single-core decode timing")
    p.add_argument("--num-cpus", type=int, default=0, help="Ray's CPUs (0: the machine's)")
    p.add_argument("--batch-size", type=int, default=32, help="images per decode task batch")
    return p.parse_args(argv)


def photo_jpeg(rng: np.random.Generator, width: int = 500, height: int = 375, quality: int = 92) -> bytes:
    """A photo-like JPEG: a colour gradient, soft blobs, mid-frequency texture, noise and a few ellipses."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    img = c[0] + (c[1] - c[0]) * (xx / width)[..., None] + (c[2] - c[0]) * (yy / height)[..., None]
    low = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC
    )
    img = 0.5 * img + 0.5 * np.asarray(low, np.float32)
    texture = Image.fromarray(rng.integers(0, 255, (height // 4, width // 4, 3), dtype=np.uint8))
    img += (np.asarray(texture.resize((width, height), Image.BILINEAR), np.float32) - 127.5) * 0.35
    img += rng.normal(0, 14, (height, width, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse(
            [x0, y0, x0 + int(rng.integers(20, 150)), y0 + int(rng.integers(20, 150))],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    out = io.BytesIO()
    pil.save(out, "JPEG", quality=quality)
    return out.getvalue()


def write_images(root: Path, count: int, classes: int, seed: int = 0) -> Path:
    """`count` photo-like JPEGs in an ImageFolder tree `root/c00/…` (kept when already there)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{count} {classes} {seed}":
        return root
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"c{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:06d}.jpg").write_bytes(photo_jpeg(rng))
    done.write_text(f"{count} {classes} {seed}")
    return root


def ray_rate(make_dataset, passes: int) -> tuple[float, int]:
    """(best images/s over `passes` full passes, rows per pass) of the dataset `make_dataset()` builds."""
    best, rows = 0.0, 0
    for _ in range(passes):
        ds, start = make_dataset(), time.perf_counter()
        rows = sum(len(batch["id"]) for batch in ds.iter_batches(batch_size=None, batch_format="numpy"))
        best = max(best, rows / (time.perf_counter() - start))
    return best, rows


def _read_bytes(batch: dict) -> dict:
    from promptkd_ray import storage

    return {
        "id": batch["id"],
        "bytes": np.asarray([storage.read_bytes(str(p)) for p in batch["id"]], dtype=object),
    }


def ingest_rates(paths: list, pack: str, args) -> dict:
    """Ray Data images/s: read only and read → decode → view, loose files vs the pack's shards."""
    import ray

    from promptkd_ray.orchestration.packs import pack_rows
    from promptkd_ray.orchestration.pipeline import DecodeSpec, decode_and_augment

    blocks = max(4, len(paths) // (4 * args.batch_size))
    views = {
        "fn_kwargs": {"spec": DecodeSpec(VIEW_SIZE, seed=0, on_bad_image="fail"), "mode": "train"},
        "batch_size": args.batch_size,
        "batch_format": "numpy",
        "num_cpus": 1,
    }

    def loose():
        return ray.data.from_items([{"id": p} for p in paths], override_num_blocks=blocks)

    def shards():
        return pack_rows(pack, "train")

    plans = {
        ("loose files", "read"): lambda: loose().map_batches(
            _read_bytes, batch_size=args.batch_size, batch_format="numpy", num_cpus=1
        ),
        ("pack shards", "read"): shards,
        ("loose files", "read → decode → view"): lambda: loose().map_batches(decode_and_augment, **views),
        ("pack shards", "read → decode → view"): lambda: shards().map_batches(decode_and_augment, **views),
    }
    rates = {}
    for key, plan in plans.items():
        rate, rows = ray_rate(plan, args.passes)
        assert rows == len(paths), f"{key}: {rows} rows of {len(paths)}"
        rates[key] = rate
        log.info("%s, %s: %.1f images/s", *key, rate)
    return rates


def decode_rates(blobs: list, passes: int = 3) -> dict:
    """Single-core images/s to an RGB uint8 HWC array (and back to a PIL image): PIL vs torchvision.io."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    from promptkd_ray.data.decode import read_image

    torch.set_num_threads(1)

    def pil(data):
        return np.asarray(read_image(data))

    def tv(data):
        return (
            decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            .permute(1, 2, 0)
            .contiguous()
            .numpy()
        )

    def tv_pil(data):
        return Image.fromarray(tv(data))

    rates = {}
    for name, fn in (
        ("PIL (read_image)", pil),
        ("torchvision.io.decode_image", tv),
        ("torchvision.io.decode_image → PIL image", tv_pil),
    ):
        fn(blobs[0])
        best = 0.0
        for _ in range(passes):
            start = time.perf_counter()
            for data in blobs:
                fn(data)
            best = max(best, len(blobs) / (time.perf_counter() - start))
        rates[name] = best
        log.info("decode, 1 core, %s: %.1f images/s", name, best)
    return rates


def agreement(blobs: list) -> dict:
    """Pixel differences PIL vs torchvision.io (decoded images and 224-px test views) and the toy
    teacher's feature cosine between the two."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.data.decode import read_image, render_test, to_model_input
    from promptkd_ray.toyworld import build_world

    raw, views, a32, b32 = [], [], [], []
    for data in blobs:
        a = read_image(data)
        b = Image.fromarray(
            decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            .permute(1, 2, 0)
            .contiguous()
            .numpy()
        )
        raw.append(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)))
        views.append(
            np.abs(render_test(a, VIEW_SIZE).astype(np.int16) - render_test(b, VIEW_SIZE).astype(np.int16))
        )
        a32.append(render_test(a, 32))
        b32.append(render_test(b, 32))
    teacher = ModelRef("zeroshot", build_world(profile="quick", progress=False).teacher_spec).build("cpu")
    with torch.no_grad():
        fa, fb = (teacher.encode_image(to_model_input(torch.from_numpy(np.stack(x)))) for x in (a32, b32))
    cos = torch.nn.functional.cosine_similarity(fa, fb).numpy()
    stats = {
        "images": len(blobs),
        "decoded_max_abs": int(max(d.max() for d in raw)),
        "decoded_mean_abs": float(np.mean([d.mean() for d in raw])),
        "decoded_equal_fraction": float(np.mean([(d == 0).mean() for d in raw])),
        "view224_max_abs": int(max(d.max() for d in views)),
        "view224_mean_abs": float(np.mean([d.mean() for d in views])),
        "toy_teacher_cosine_min": float(cos.min()),
        "toy_teacher_cosine_mean": float(cos.mean()),
    }
    log.info("agreement: %s", stats)
    return stats


def report(sizes: list, pack_stats: dict, rates: dict, decode: dict, agree: dict, cpus: int) -> str:
    lines = [
        f"# Ingest: {len(sizes)} photo-like JPEGs, mean {np.mean(sizes) / 1e3:.1f} KB "
        f"(≈ 500 × 375), Ray with {cpus} CPUs",
        "",
        f"Pack: {pack_stats['shards']} shards, {pack_stats['mb']:.1f} MB, written at "
        f"{pack_stats['images_per_s']:.0f} images/s.",
        "",
        "| Ray Data path | loose files (images/s) | pack shards (images/s) | shards / loose |",
        "|---|---|---|---|",
    ]
    for stage in ("read", "read → decode → view"):
        a, b = rates[("loose files", stage)], rates[("pack shards", stage)]
        label = stage if stage == "read" else f"{stage} ({VIEW_SIZE}-px train view)"
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
    base = decode["PIL (read_image)"]
    lines += ["", "| decoder (one core, to an RGB uint8 array) | images/s | vs PIL |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {rate / base:.2f}× |" for name, rate in decode.items()]
    lines += [
        "",
        f"Agreement PIL vs torchvision.io over {agree['images']} images: decoded pixels max |Δ| "
        f"{agree['decoded_max_abs']}, mean |Δ| {agree['decoded_mean_abs']:.4f}, "
        f"{100 * agree['decoded_equal_fraction']:.2f} % of values equal; {VIEW_SIZE}-px test views max |Δ| "
        f"{agree['view224_max_abs']}, mean |Δ| {agree['view224_mean_abs']:.4f}; toy teacher feature cosine "
        f"min {agree['toy_teacher_cosine_min']:.6f}, mean {agree['toy_teacher_cosine_mean']:.6f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    import ray

    from promptkd_ray.data.folders import load_image_folder
    from promptkd_ray.data.pack_writer import PackOptions, write_pack

    args, out = start_benchmark(parse_args, argv)
    root = write_images(out / "images", args.images, args.classes)
    splits = load_image_folder(root)
    paths = [it.path for it in splits.train]
    sizes = [os.path.getsize(p) for p in paths]
    log.info("%d JPEGs, mean %.1f KB", len(paths), np.mean(sizes) / 1e3)
    start = time.perf_counter()
    pack = write_pack(
        splits,
        str(out / "pack"),
        {"kind": "imagefolder", "root": str(root)},
        PackOptions(("train",), shard_mb=args.shard_mb, overwrite=True, progress=False),
    )
    shards = pack.manifest["splits"]["train"]["shards"]
    pack_stats = {
        "shards": len(shards),
        "mb": sum(s["bytes"] for s in shards) / 1e6,
        "images_per_s": len(paths) / (time.perf_counter() - start),
    }
    cpus = args.num_cpus or os.cpu_count()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rates = ingest_rates(paths, pack.root, args)
    ray.shutdown()
    blobs = [Path(p).read_bytes() for p in paths[: args.decode_images]]
    decode, agree = decode_rates(blobs), agreement(blobs)
    text = report(sizes, pack_stats, rates, decode, agree, cpus)
    (out / "ingest.md").write_text(text)
    ray_rates = {" / ".join(k): v for k, v in rates.items()}
    (out / "ingest.json").write_text(
        json.dumps({"pack": pack_stats, "ray": ray_rates, "decode": decode, "agreement": agree}, indent=1)
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
