"""The optimiser and the learning-rate rule of both stages (pure PyTorch).

Default = the authors' (Dassl) recipe, in Stage I (PromptSRC) and Stage II (PromptKD) alike: SGD
lr 0.005, momentum 0.9, weight decay 5e-4; cosine annealing over all epochs, stepped once per epoch,
after `warmup_epochs` at a constant 1e-5. Dassl's `ConstantWarmupScheduler` steps its cosine
successor with `epoch - warmup`, so epoch e (0-based) trains at

    e < warmup:   warmup_lr
    e ≥ warmup:   ½ · lr · (1 + cos(π · (e − warmup) / epochs))

`lr` is the job's effective lr (linear scaling applied). AdamW (beta1 = momentum) is an option
for short toy jobs, where SGD at the authors' lr moves the prompts too little. The settings come
from a job's optimisation section, read by attribute (`OptimSettings`).

`grad_clip_norm` > 0 clips the global norm of the gradients before every step (a step pre-hook of the
optimiser, so every caller of `build_optimizer` gets it and a resumed run too; under DDP every rank
clips the same all-reduced gradients). The authors do not clip (0, the default). It exists for
parameters whose gradients dwarf the prompts' under SGD: ComKD-CLIP's EduAttention enters the logits
unnormalised, and at the authors' lr its scale α diverges within a few steps (docs/protocol.md).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch


class OptimSettings(Protocol):
    """What this module reads of a job's optimisation section (`config.sections.OptimConfig` has it;
    the core does not import the config)."""

    optimizer: str
    schedule: str
    epochs: int
    warmup_epochs: int
    warmup_lr: float
    momentum: float
    grad_clip_norm: float
    weight_decay: float

    @property
    def effective_lr(self) -> float: ...


def lr_at_epoch(epoch: int, optim: OptimSettings) -> float:
    """The learning rate of 0-based `epoch`."""
    lr = optim.effective_lr
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    if optim.schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - optim.warmup_epochs) / optim.epochs))


def build_optimizer(params, optim: OptimSettings) -> torch.optim.Optimizer:
    params, lr = list(params), optim.effective_lr
    if optim.optimizer == "adamw":
        optimizer = torch.optim.AdamW(
            params, lr=lr, betas=(optim.momentum, 0.999), weight_decay=optim.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.grad_clip_norm > 0:
        clip_gradients(optimizer, optim.grad_clip_norm)
    return optimizer


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Before each of `optimizer`'s steps, scale its parameters' gradients so that their global L2
    norm is at most `max_norm`."""

    def clip(opt, args, kwargs):  # clip_grad_norm_ skips parameters without a gradient
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], max_norm)

    optimizer.register_step_pre_hook(clip)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSettings):
    """A per-epoch LambdaLR following `lr_at_epoch`; call `.step()` once after each epoch."""
    lr = optim.effective_lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_at_epoch(epoch, optim) / lr)
