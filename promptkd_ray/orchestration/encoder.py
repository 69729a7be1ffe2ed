"""One image encoder for every process that runs a model over images: the teacher pool's actors
(`teacher_pool.TeacherPredictor`) and batch inference's (`inference.ItemEncoder`).

It builds its model once from a `ModelRef` on its own device and runs the image tower under one
autocast rule, the job's `precision` (`core.step.autocast_dtype`: "auto" = bf16 on a GPU, none on
the CPU; "bf16" / "fp16"; "fp32" = none).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.artifacts import ModelRef
from ..core.step import autocast_dtype
from ..data.decode import to_model_input


class ImageEncoder:
    def __init__(self, model: ModelRef, precision: str = "auto"):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.build(self.device).eval()
        self.autocast = autocast_dtype(precision, self.device)

    def ready(self) -> bool:
        return True

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images [B, H, W, 3] → normalised image features, float32 [B, d] on the CPU."""
        images = to_model_input(torch.from_numpy(np.asarray(images)).to(self.device))
        with torch.autocast(
            self.device, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            return self.model.encode_image(images).float().cpu()
