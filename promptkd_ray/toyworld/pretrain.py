"""Contrastive (CLIP) pretraining of the toy models on a web corpus, on the CPU.

Design decisions:
- The models are plain open_clip `CLIP`s created from the package's JSON configs
  (`toy-teacher`, `toy-student`), with open_clip's own BPE tokenizer and a 16-token context, so
  the checkpoints load through `promptkd_ray.core.models.load_clip("toy-teacher:/path.safetensors")`
  exactly like real weights.
- Loss: a symmetric InfoNCE whose targets spread over every item of the batch with the same
  concept (multi-positive, as in UniCL / SupCon): with ~100 concepts and batches of 64–128,
  duplicates are common, and treating them as negatives would slow learning a lot.
- Style curriculum (optional): the first `style_warmup_steps` batches come only from
  `warmup_styles`. Tiny ViTs trained from scratch find shapes much sooner in filled shapes than in
  outlines; on the teacher's full style mix the loss sits on a colour-only plateau for ~300 steps.
- The corpus is a pool rendered once (`pool_size` images); batches are drawn from it with random
  horizontal flips and freshly sampled captions, so rendering does not dominate the step time.
- AdamW with linear warm-up and cosine decay; no weight decay on gains, biases, embeddings and
  the logit scale; the logit scale is learned and clamped at 100 (CLIP's recipe).
- Deterministic from `PretrainSpec.seed` (model init from torch's generator, data from a numpy
  Generator) for a fixed number of torch threads.
- Weights are written as a `.safetensors` state dict, atomically (temp file + rename), with the
  spec in the file's metadata.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .corpus import CorpusSpec, caption_batch, render_pool

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class PretrainSpec:
    """One contrastive pretraining run."""

    model: str  # open_clip config name ("toy-teacher", "toy-student")
    corpus: CorpusSpec = field(default_factory=CorpusSpec)  # the web corpus it sees
    steps: int = 300  # optimiser steps
    batch_size: int = 256  # image-caption pairs per step
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 0.1  # AdamW decay on matrices only
    warmup_steps: int = 20  # linear warm-up, then cosine to 0
    pool_size: int = 20000  # corpus images rendered once; batches are drawn from them
    warmup_styles: tuple = ()  # styles of the first `style_warmup_steps` batches (curriculum); () = all
    style_warmup_steps: int = 0  # steps that see only `warmup_styles`
    seed: int = 0  # fixes the init and the corpus stream

    def __post_init__(self):
        missing = [s for s in self.warmup_styles if s not in self.corpus.styles]
        if missing or (self.style_warmup_steps > 0 and not self.warmup_styles):
            raise ValueError(
                f"PretrainSpec: style warm-up needs styles of the corpus {sorted(self.corpus.styles)}, "
                f"got {list(self.warmup_styles)} for {self.style_warmup_steps} steps."
            )

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "corpus": self.corpus.as_dict(),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "pool_size": self.pool_size,
            "warmup_styles": list(self.warmup_styles),
            "style_warmup_steps": self.style_warmup_steps,
            "seed": self.seed,
        }


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → CLIP-normalised float [B, 3, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def multi_positive_infonce(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    concept_ids: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE with all same-concept pairs as positives.

    Args:
        image_features, text_features: L2-normalised [B, D].
        concept_ids: [B] int; items with equal ids are positives of each other.
        logit_scale: scalar (already exponentiated).
    Returns:
        scalar: ½·(CE(image→text) + CE(text→image)) against targets uniform over the positives.
    """
    logits = logit_scale * image_features @ text_features.t()  # shape = [B, B]
    positives = (concept_ids[:, None] == concept_ids[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric mask: same for both directions
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_matrix = p.ndim >= 2 and "embedding" not in name
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, spec: PretrainSpec) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain_clip(spec: PretrainSpec, out_path: "str | os.PathLike", progress: bool = True) -> Path:
    """Train `spec.model` from scratch on `spec.corpus`; write its state dict to `out_path`."""
    import open_clip
    from tqdm.auto import tqdm

    from ..core.models.loading import quiet_open_clip, register_model_configs

    register_model_configs()
    torch.manual_seed(spec.seed)
    with quiet_open_clip(random_init_intended=True):  # pretraining from scratch
        model = open_clip.create_model(spec.model, pretrained=None)
        tokenizer = open_clip.get_tokenizer(spec.model)
    optimizer = torch.optim.AdamW(
        _param_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.98), eps=1e-6
    )
    rng = np.random.default_rng([spec.seed, 0x70C])
    start = time.time()
    pool = render_pool(spec.corpus, spec.pool_size, rng, progress=progress)
    log.info(
        "rendered a corpus pool of %d images for %s in %.0f s",
        spec.pool_size,
        spec.model,
        time.time() - start,
    )
    warmup_items = np.flatnonzero(np.isin(pool.styles, spec.warmup_styles))  # pool indices of warm-up styles
    model.train()
    start, losses = time.time(), []
    bar = tqdm(range(spec.steps), desc=f"pretrain {spec.model}", disable=not progress, unit="step")
    for step in bar:
        candidates = warmup_items if step < spec.style_warmup_steps else None
        idx = (
            candidates[rng.integers(0, len(candidates), spec.batch_size)]
            if candidates is not None
            else rng.integers(0, spec.pool_size, spec.batch_size)
        )
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss, scale = _train_step(model, tokenizer, optimizer, pool, idx, spec.corpus, rng)
        losses.append(loss)
        if step % 50 == 0:
            log.debug("%s step %d loss %.3f", spec.model, step, np.mean(losses[-50:]))
        if step % 10 == 0 or step == spec.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", scale=f"{scale:.1f}")
    log.info(
        "pretrained %s: %d steps in %.0f s, final loss %.3f",
        spec.model,
        spec.steps,
        time.time() - start,
        float(np.mean(losses[-10:])),
    )
    return save_weights(model, spec, out_path)


def _train_step(
    model, tokenizer, optimizer, pool, idx: np.ndarray, corpus: CorpusSpec, rng: np.random.Generator
) -> tuple[float, float]:
    """One contrastive step on pool items `idx` (random h-flips, fresh captions) → (loss, scale)."""
    images = images_to_tensor(pool.images[idx])  # shape = [B, 3, H, W]
    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
    images[flip] = images[flip].flip(-1)
    concept_ids = pool.concept_ids[idx]
    captions = caption_batch(corpus, concept_ids, [pool.styles[i] for i in idx], rng)
    image_features = model.encode_image(images, normalize=True)  # shape = [B, D]
    text_features = model.encode_text(tokenizer(captions), normalize=True)  # shape = [B, D]
    scale = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    loss = multi_positive_infonce(image_features, text_features, torch.from_numpy(concept_ids), scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
    return float(loss.detach()), float(scale.detach())


def save_weights(model: torch.nn.Module, spec: PretrainSpec, out_path: "str | os.PathLike") -> Path:
    """Write the model's state dict as safetensors (spec in the metadata), atomically."""
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"pretrain_spec": json.dumps(spec.as_dict(), sort_keys=True)})
    os.replace(tmp, out_path)
    return out_path
