"""The teacher pool: Ray Data actors, one teacher each, that add the teacher's image feature of
every row's own view.

    ds.map_batches(TeacherPredictor, compute=ActorPoolStrategy(size | min..max), num_gpus=1 where
                   GPUs exist, resources={"teacher": 1} on a cluster, batch_size=B)

Design decisions:
- The teacher emits features, not logits (DESIGN.md): logits are a matmul on the trainer, so the
  class set and the temperature never reach the pool.
- An actor receives a `ModelRef` (a few bytes: an artifact path or a model spec) and builds its
  teacher once, on its own device; bf16 autocast on GPU by default (`teacher_pool.precision`).
- The pool is fixed (`size`) or autoscaled by Ray Data (`size` … `max_size`); actor placement is
  Ray's (custom resources such as `teacher: 1` pin it to teacher nodes).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.artifacts import ModelRef
from ..core.step import autocast_dtype
from ..data.decode import to_model_input


class TeacherPredictor:
    """Ray Data callable class: one teacher per actor; adds each row's normalised teacher image
    feature of the row's own view, as fp16 `teacher_feature` [d]."""

    def __init__(self, teacher: ModelRef, precision: str = "auto"):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = teacher.build(self.device).eval()
        self.autocast = autocast_dtype(precision, self.device)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        images = to_model_input(torch.from_numpy(np.asarray(batch["image"])).to(self.device))
        with torch.autocast(self.device, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            features = self.teacher.encode_image(images)  # shape = [B, d], L2-normalised, float32
        batch["teacher_feature"] = features.to(torch.float16).cpu().numpy()
        return batch


def pool_options(pool, cluster_has_gpus: bool) -> dict:
    """map_batches keyword arguments that place and size the teacher pool (`TeacherPoolConfig`)."""
    import ray

    if pool.max_size:
        compute = ray.data.ActorPoolStrategy(min_size=pool.size, max_size=pool.max_size)
    else:
        compute = ray.data.ActorPoolStrategy(size=pool.size)
    num_gpus = pool.num_gpus if pool.num_gpus >= 0 else (1.0 if cluster_has_gpus else 0.0)
    options = {"compute": compute, "batch_size": pool.batch_size, "num_cpus": pool.num_cpus, "num_gpus": num_gpus}
    if pool.resources:
        options["resources"] = dict(pool.resources)
    return options


def add_teacher_features(ds, teacher: ModelRef, pool, cluster_has_gpus: bool):
    """`ds` (rows with a uint8 `image` view) with the teacher pool's `teacher_feature` added."""
    return ds.map_batches(TeacherPredictor, batch_format="numpy",
                          fn_constructor_kwargs={"teacher": teacher, "precision": pool.precision},
                          **pool_options(pool, cluster_has_gpus))
