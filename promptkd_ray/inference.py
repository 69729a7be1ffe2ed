"""Batch inference over image items: Ray Data (default) or in-process, same results.

Ray Data path: `from_items` (path, label, index) → decode + test transform in CPU tasks →
`map_batches(ImageEncoder, compute=ActorPoolStrategy(size=k))`, each actor building its model once
from a small picklable `EncoderSpec` (a student artifact, a teacher artifact, or a zero-shot model
spec), with `num_gpus=1` per actor where GPUs exist. Rows come back in any order and are sorted by
index. Unreadable images are dropped and counted, never end the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .data.transforms import load_rgb, test_transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    kind: str  # "student" (artifact path), "teacher" (artifact path) or "zeroshot" (model spec)
    source: str  # artifact path or MODEL[:PRETRAINED]

    def build(self, device: str = "cpu"):
        """→ (model with .encode_image, image size)."""
        if self.kind == "student":
            from .artifacts import load_student

            model, _ = load_student(self.source, device=device)
            visual = model.image_encoder.visual
        elif self.kind == "teacher":
            from .artifacts import load_teacher

            model, _ = load_teacher(self.source, device=device)
            visual = model.image_encoder.visual
        elif self.kind == "zeroshot":
            from .models import build_teacher

            model = build_teacher(self.source, device=device)
            visual = model.image_encoder.visual
        else:
            raise ValueError(f"encoder kind must be student, teacher or zeroshot, got {self.kind!r}.")
        return model.eval(), int(visual.image_size[0])

    def image_size(self) -> int:
        """Input resolution from the model config, without building the model."""
        import json
        from pathlib import Path

        from .models.loading import ModelSpec, model_config

        spec = self.source
        if self.kind in ("student", "teacher"):
            sidecar = Path(self.source)
            sidecar = sidecar.with_name(sidecar.name.removesuffix(".safetensors").removesuffix(".json") + ".json")
            if not sidecar.is_file():
                raise FileNotFoundError(f"{self.kind.capitalize()} artifact sidecar {sidecar} does not exist.")
            spec = json.loads(sidecar.read_text())["spec"]
        size = model_config(ModelSpec.parse(spec).name)["vision_cfg"]["image_size"]
        return int(size[0] if isinstance(size, (list, tuple)) else size)


def decode_batch(batch: dict, size: int) -> dict:
    """numpy batch {path, label, index} → {image [b, 3, s, s] float32, label, index, path}; drops unreadable."""
    images, keep = [], []
    for i, path in enumerate(batch["path"]):
        try:
            images.append(test_transform(load_rgb(str(path)), size).numpy())
            keep.append(i)
        except Exception as exc:  # a corrupt or non-image file: skip, counted by the caller
            log.warning("skipping unreadable image %s (%s)", path, type(exc).__name__)
    shape = (0, 3, size, size)
    return {
        "image": np.stack(images) if images else np.zeros(shape, np.float32),
        "label": np.asarray(batch["label"])[keep],
        "index": np.asarray(batch["index"])[keep],
        "path": np.asarray(batch["path"])[keep],
    }


class ImageEncoder:
    """Ray Data callable class: builds the model once per actor, encodes batches of images."""

    def __init__(self, spec: EncoderSpec):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, _ = spec.build(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        images = torch.from_numpy(batch["image"]).to(self.device)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
            features = self.model.encode_image(images).float()
        return {"feature": features.cpu().numpy(), "label": batch["label"], "index": batch["index"],
                "path": batch["path"]}


@dataclass
class Encoded:
    features: torch.Tensor  # [M, d] normalised, in item order (unreadable items removed)
    labels: torch.Tensor  # [M]
    paths: list[str]
    skipped: int  # unreadable images


def encode_items(spec: EncoderSpec, paths: Sequence[str], labels: Sequence[int], use_ray: bool = True,
                 batch_size: int = 64, num_actors: int = 1) -> Encoded:
    """Encode images with the model of `spec`; Ray Data when use_ray (the default), else in-process."""
    size = spec.image_size()
    if use_ray:
        rows = _encode_with_ray(spec, paths, labels, size, batch_size, num_actors)
    else:
        rows = _encode_in_process(spec, paths, labels, size, batch_size)
    rows.sort(key=lambda r: int(r["index"]))
    feats = torch.from_numpy(np.stack([r["feature"] for r in rows])) if rows else torch.zeros(0, 0)
    return Encoded(features=feats, labels=torch.tensor([int(r["label"]) for r in rows], dtype=torch.long),
                   paths=[str(r["path"]) for r in rows], skipped=len(paths) - len(rows))


def _items(paths, labels) -> list[dict]:
    return [{"path": str(p), "label": int(l), "index": i} for i, (p, l) in enumerate(zip(paths, labels))]


def _encode_in_process(spec, paths, labels, size, batch_size) -> list[dict]:
    encoder = ImageEncoder(spec)
    items = _items(paths, labels)
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = decode_batch({k: np.asarray([it[k] for it in chunk]) for k in ("path", "label", "index")}, size)
        if len(batch["index"]):
            out = encoder(batch)
            rows += [{k: out[k][i] for k in out} for i in range(len(out["index"]))]
    return rows


def _encode_with_ray(spec, paths, labels, size, batch_size, num_actors) -> list[dict]:
    import ray

    gpus = 1 if torch.cuda.is_available() else 0
    ds = ray.data.from_items(_items(paths, labels))
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": size}, batch_format="numpy", batch_size=batch_size)
    ds = ds.map_batches(ImageEncoder, fn_constructor_kwargs={"spec": spec}, batch_format="numpy",
                        batch_size=batch_size, num_gpus=gpus,
                        compute=ray.data.ActorPoolStrategy(size=num_actors))
    return list(ds.iter_rows())
