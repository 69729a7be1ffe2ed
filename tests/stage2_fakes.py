"""Tiny unlabeled-image datasets for the Stage II tests: varied PNGs in the split-JSON layout,
optionally with unreadable files (corrupt bytes, truncated PNGs, text files named .png)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

BAD_KINDS = ("corrupt", "truncated", "not_image")


def png_bytes(rng: np.random.Generator, width: int = 40, height: int = 36) -> bytes:
    """A small random image: a coloured rectangle on a noisy background."""
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[top : top + height // 2, left : left + width // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def bad_bytes(kind: str, rng: np.random.Generator) -> bytes:
    if kind == "corrupt":
        return bytes(rng.integers(0, 255, 300, dtype=np.uint8))
    if kind == "truncated":
        return png_bytes(rng)[:120]
    if kind == "not_image":
        return b"this is a text file, not an image\n"
    raise ValueError(kind)


def make_split_json(
    root: Path,
    classnames=("red", "green", "blue", "yellow"),
    per_class: int = 20,
    bad_per_kind: int = 0,
    seed: int = 0,
    val_per_class: int = 0,
) -> tuple[Path, list[str]]:
    """`root/toy/images/…` + `root/toy/split.json` ({"train", "val", "test"}); bad files go in train.
    Returns (root, absolute paths of the bad files)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "toy" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    split: dict = {"train": [], "val": [], "test": []}
    bad: list[str] = []
    for label, name in enumerate(classnames):
        for part, count in (("train", per_class), ("val", val_per_class), ("test", 2)):
            for i in range(count):
                rel = f"{name}/{part}_{i}.png"
                (image_dir / name).mkdir(exist_ok=True)
                (image_dir / rel).write_bytes(png_bytes(rng))
                split[part].append([rel, label, name])
    for kind in BAD_KINDS:
        for i in range(bad_per_kind):
            rel = f"{classnames[i % len(classnames)]}/bad_{kind}_{i}.png"
            (image_dir / rel).write_bytes(bad_bytes(kind, rng))
            split["train"].append([rel, i % len(classnames), classnames[i % len(classnames)]])
            bad.append(str((image_dir / rel).resolve()))
    (root / "toy" / "split.json").write_text(json.dumps(split))
    return root, bad


def tiny_job(root: Path, storage: "Path | str", name: str, **sections) -> dict:
    """A job dict on `make_split_json` data with the tiny test models; `sections` update it."""
    job = {
        "kind": "distill",
        "name": name,
        "storage_path": str(storage),
        "teacher": {"spec": "tiny-vit-teacher"},
        "student": {"spec": "tiny-vit-student", "depth": 2, "n_ctx": 2},
        "data": {
            "source": "split_json",
            "root": str(root),
            "dataset": "toy",
            "image_folder": "images",
            "split_file": "split.json",
            "heldout_images": 8,
            "decode_batch_size": 16,
        },
        "teacher_pool": {"size": 1, "batch_size": 32},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "num_workers": 1,
            "optimizer": "adamw",
            "lr": 0.01,
            "log_every": 1000,
        },
        "ray": {"progress_bars": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            job.setdefault(key, {}).update(value)
        else:
            job[key] = value
    return job


def fixed_teacher(path: Path, model: str = "tiny-vit-teacher", seed: int = 0) -> str:
    """`model` with weights drawn under `seed`, saved at `path` (safetensors) → its spec MODEL:PATH: a
    teacher whose features are the same in every process (and so in every cache built with it)."""
    import torch
    from safetensors.torch import save_file

    from promptkd_ray.core.models import load_clip

    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in load_clip(model).state_dict().items()}, str(path))
    return f"{model}:{path}"


def job_with(raw: dict, **changes):
    """The DistillJob of a copy of the job dict `raw` with `changes` (a dict updates its section)."""
    from promptkd_ray.config import distill_job_from_dict

    raw = json.loads(json.dumps(raw))
    for section, values in changes.items():
        raw[section] = dict(raw.get(section, {}), **values) if isinstance(values, dict) else values
    return distill_job_from_dict(raw)


def part_rows(cache_dir: Path, part: str) -> list:
    """The rows of a soft-label cache's part, as plain pyarrow reads them (no Ray), in stored order."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in sorted((Path(cache_dir) / part).glob("*.parquet"))]
    return [row for t in tables for row in t.to_pylist()]


def step_losses(run_dir) -> list:
    """(global step, loss) of every step, from a run's TensorBoard files (train.log_every = 1)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars("distill/step/loss")]


def two_teachers(folder: Path, classnames=("red", "green", "blue", "yellow")) -> dict:
    """Two tiny teachers with different weights as a space's teacher choice ({"t0": …, "t1": …});
    t1 comes with its class vectors, t0's are computed by the run."""
    import torch
    from safetensors.torch import save_file

    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.classvectors import compute_class_vectors, save_class_vectors
    from promptkd_ray.core.models import load_clip

    teachers = {}
    for i in range(2):
        torch.manual_seed(i)
        weights = folder / f"teacher{i}.safetensors"
        save_file(
            {k: v.contiguous() for k, v in load_clip("tiny-vit-teacher").state_dict().items()}, str(weights)
        )
        teachers[f"t{i}"] = {"spec": f"tiny-vit-teacher:{weights}"}
    spec = teachers["t1"]["spec"]
    vectors = compute_class_vectors(ModelRef("zeroshot", spec).build(), list(classnames), teacher_spec=spec)
    save_class_vectors(vectors, str(folder / "t1_class_vectors"))
    teachers["t1"]["class_vectors"] = str(folder / "t1_class_vectors")
    return teachers
