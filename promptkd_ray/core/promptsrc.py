"""PromptSRC (Khattak et al., ICCV 2023) in plain PyTorch: the Stage I teacher recipe's pieces.

One training step on a batch of labelled images (base classes, k shots each):

    û_p = teacher image tower with prompts (normalised)      û_f = the same tower without prompts
    ŵ_p = prompted text "a photo of a {c}." per class         ŵ_f = frozen text target per class
    logits = s · û_p · ŵ_pᵀ                                   zs    = s · û_f · ŵ_fᵀ
    L = CE(logits, y) + 25 · L1(ŵ_p, ŵ_f) + 10 · L1(û_p, û_f) + KL(zs ‖ logits)

Design decisions (docs/protocol.md, PromptSRC section; the authors' `trainers/promptsrc.py`):
- ŵ_f is the frozen CLIP's text feature *averaged over the 60 ImageNet templates before
  normalisation* (the authors average `encode_text` outputs and normalise once), computed once.
- û_f comes from the teacher's own backbone run without prompts (`visual(images)`), which is
  exactly the authors' separate frozen `ZS_image_encoder` copy, without the copy.
- KL_logits = kl_div(log_softmax(logits), log_softmax(zs), reduction="sum", log_target=True) / numel;
  L1 terms use reduction "mean". The weights are `SCLWeights` (text 25, image 10, logits 1).
- Gaussian Prompt Aggregation: after epoch e = 1 … E the prompts are added with weight
  g(e) = N(e; μ, σ) normalised over e = 1 … E; the final prompts are that sum. Only the prompt
  tensors are aggregated (the rest is frozen, and the weights sum to 1, so this is the authors'
  whole-state average).
- The optimiser and the learning rate per epoch are Stage II's (`schedule.py`): Dassl's
  ConstantWarmupScheduler + CosineAnnealingLR(T_max = E).
- `PromptSRCTraining` is one teacher's training: a step in two halves (backward, then the
  optimiser step, so that workers can average the gradients between them), the end of an epoch
  (schedule, GPA) and what a checkpoint holds. The loops over epochs and batches are its caller's
  (the Ray Train worker in `teacher.py`); nothing here calls back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .models.prompted_text import clean_classname


@dataclass(frozen=True)
class SCLWeights:
    text: float = 25.0  # L1 between prompted and frozen text features (authors: TEXT_LOSS_WEIGHT 25)
    image: float = 10.0  # L1 between prompted and frozen image features (authors: IMAGE_LOSS_WEIGHT 10)
    logits: float = 1.0  # KL between zero-shot and prompted logits (authors: 1)


def scl_kl(logits: torch.Tensor, zero_shot_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(zs) ‖ softmax(logits)), summed and divided by B·N (the authors' `/ logits.numel()`)."""
    return (
        F.kl_div(
            F.log_softmax(logits.float(), dim=-1),
            F.log_softmax(zero_shot_logits.detach().float(), dim=-1),
            reduction="sum",
            log_target=True,
        )
        / logits.numel()
    )


def promptsrc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    text_features: torch.Tensor,
    frozen_text: torch.Tensor,
    image_features: torch.Tensor,
    frozen_image: torch.Tensor,
    zero_shot_logits: torch.Tensor,
    weights: SCLWeights = SCLWeights(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = CE + L_SCL. logits, zero_shot_logits [B, N]; labels [B]; text features [N, d] and image
    features [B, d], all L2-normalised; the frozen ones carry no gradient. → (loss, parts as floats)."""
    parts = {
        "ce": F.cross_entropy(logits.float(), labels),
        "scl_text": weights.text * F.l1_loss(text_features.float(), frozen_text.detach().float()),
        "scl_image": weights.image * F.l1_loss(image_features.float(), frozen_image.detach().float()),
        "scl_logits": weights.logits * scl_kl(logits, zero_shot_logits),
    }
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def gpa_weights(epochs: int, mean: float = 15.0, std: float = 1.0) -> list[float]:
    """g(e) = N(e; mean, std) for e = 1 … epochs, normalised to sum to 1."""
    if epochs < 1 or std <= 0:
        raise ValueError(f"GPA needs epochs ≥ 1 and std > 0, got {epochs} and {std}.")
    # log-densities, shifted by their max before exp, so a mean far outside 1…E cannot underflow to 0/0
    logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)]
    top = max(logs)
    dens = [math.exp(v - top) for v in logs]
    return [d / sum(dens) for d in dens]


class GaussianPromptAggregator:
    """Accumulates Σ_e g(e) · prompts_e over epochs; `state_dict` lets a resumed run continue it."""

    def __init__(self, epochs: int, mean: float = 15.0, std: float = 1.0):
        self.weights = gpa_weights(epochs, mean, std)
        self.total: dict[str, torch.Tensor] = {}
        self.epochs_added: list[int] = []

    def add(self, epoch: int, prompts: dict[str, torch.Tensor]) -> None:
        """Add the prompts at the end of `epoch` (1-based) with weight g(epoch)."""
        if epoch in self.epochs_added or not 1 <= epoch <= len(self.weights):
            raise ValueError(f"GPA: epoch {epoch} is out of 1…{len(self.weights)} or was already added.")
        w = self.weights[epoch - 1]
        for key, value in prompts.items():
            value = value.detach().float().cpu()
            self.total[key] = self.total.get(key, torch.zeros_like(value)) + w * value
        self.epochs_added.append(epoch)

    def result(self) -> dict[str, torch.Tensor]:
        if len(self.epochs_added) != len(self.weights):
            raise RuntimeError(f"GPA has {len(self.epochs_added)} of {len(self.weights)} epochs.")
        return {k: v.clone() for k, v in self.total.items()}

    def state_dict(self) -> dict:
        return {"total": dict(self.total), "epochs_added": list(self.epochs_added)}

    def load_state_dict(self, state: dict) -> None:
        self.total = dict(state["total"])
        self.epochs_added = list(state["epochs_added"])


@torch.no_grad()
def frozen_text_targets(text_encoder, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """ŵ_f [N, d]: per class, the frozen text tower's features over `templates`, averaged before
    normalisation, then L2-normalised (the authors' `fixed_embeddings`)."""
    device = text_encoder.positional_embedding.device
    total = None
    for template in templates:
        tokens = text_encoder.tokenizer([template.format(clean_classname(c)) for c in classnames]).to(device)
        feats = text_encoder.encode_tokens(tokens).float()  # [N, d], unnormalised, no prompts
        total = feats if total is None else total + feats
    return F.normalize(total / len(templates), dim=-1)


def promptsrc_forward(
    teacher, images: torch.Tensor, classnames: Sequence[str], frozen_text: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The tensors of one PromptSRC step: prompted/frozen image features [B, d], prompted text
    features [N, d], logits and zero-shot logits [B, N] (all features normalised)."""
    scale = teacher.logit_scale
    image_features = teacher.encode_image(images)  # prompted, [B, d]
    text_features = F.normalize(teacher.text_encoder.encode_prompted(classnames).float(), dim=-1)  # [N, d]
    with torch.no_grad():
        frozen_image = F.normalize(teacher.image_encoder.visual(images).float(), dim=-1)  # no prompts
        zero_shot_logits = scale * frozen_image @ frozen_text.t()
    return {
        "image_features": image_features,
        "text_features": text_features,
        "frozen_image": frozen_image,
        "logits": scale * image_features @ text_features.t(),
        "zero_shot_logits": zero_shot_logits,
    }


def promptsrc_backward(
    teacher,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    frozen_text: torch.Tensor,
    weights: SCLWeights = SCLWeights(),
) -> dict[str, float]:
    """Forward and backward of one batch (the prompts' gradients accumulate: zero them before).
    Returns the loss, its parts and the batch accuracy (percent)."""
    teacher.train()
    out = promptsrc_forward(teacher, images, classnames, frozen_text)
    loss, parts = promptsrc_loss(
        out["logits"],
        labels,
        out["text_features"],
        frozen_text,
        out["image_features"],
        out["frozen_image"],
        out["zero_shot_logits"],
        weights,
    )
    loss.backward()
    accuracy = 100.0 * (out["logits"].argmax(-1) == labels).float().mean().item()
    return {"loss": float(loss.detach()), **parts, "accuracy": accuracy}


def promptsrc_step(
    teacher,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    frozen_text: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    weights: SCLWeights = SCLWeights(),
) -> dict[str, float]:
    """One optimiser step of one process; → the loss, its parts and the batch accuracy (percent)."""
    optimizer.zero_grad(set_to_none=True)
    out = promptsrc_backward(teacher, images, labels, classnames, frozen_text, weights)
    optimizer.step()
    return out


@dataclass(frozen=True)
class PromptSRCTraining:
    """One teacher's PromptSRC training: its step in two halves (`backward`, then `step`: a worker
    averages the gradients between them), the end of an epoch (schedule, GPA) and the state a
    checkpoint holds. The objects inside change as it trains; which objects they are does not."""

    teacher: torch.nn.Module
    classnames: tuple  # the training classes, in label order
    frozen_text: torch.Tensor  # ŵ_f [N, d] (`frozen_text_targets`)
    optimizer: torch.optim.Optimizer
    scheduler: object  # the learning rate per epoch (`schedule.build_scheduler`)
    gpa: GaussianPromptAggregator
    weights: SCLWeights = SCLWeights()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Fresh gradients of one batch; → the loss, its parts and the batch accuracy (percent)."""
        self.optimizer.zero_grad(set_to_none=True)
        return promptsrc_backward(
            self.teacher, images, labels, self.classnames, self.frozen_text, self.weights
        )

    def step(self) -> None:
        self.optimizer.step()

    def end_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        """After 0-based `epoch`: the next epoch's learning rate, the prompts added to the GPA sum;
        → the prompts (what a checkpoint of the epoch holds)."""
        self.scheduler.step()
        prompts = self.teacher.prompt_state_dict()
        self.gpa.add(epoch + 1, prompts)
        return prompts

    def state_dict(self) -> dict:
        """Everything but the prompts that a resumed run needs."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "gpa": self.gpa.state_dict(),
        }

    def load_prompts(self, prompts: dict[str, torch.Tensor]) -> None:
        device = self.frozen_text.device
        self.teacher.load_state_dict({k: v.to(device) for k, v in prompts.items()}, strict=False)

    def load_state_dict(self, prompts: dict[str, torch.Tensor], state: dict) -> None:
        """Continue from a checkpoint: its prompts and `state_dict()`."""
        self.load_prompts(prompts)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gpa.load_state_dict(state["gpa"])


class EpochMeans:
    """The mean of each value of an epoch's steps (`backward`'s loss, parts and accuracy)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add(self, values: dict[str, float]) -> None:
        self.steps += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}
