"""The optimiser and learning-rate schedule of Stage II (pure PyTorch).

Default = the authors' (Dassl) recipe: SGD lr 0.005, momentum 0.9, weight decay 5e-4; cosine
annealing over all epochs, stepped once per epoch, after `warmup_epochs` at a constant 1e-5.
Dassl's `ConstantWarmupScheduler` steps its cosine successor with `epoch - warmup`, so epoch e
(0-based) trains at

    e < warmup:   warmup_lr
    e ≥ warmup:   ½ · lr · (1 + cos(π · (e − warmup) / epochs))

`lr` is the job's effective lr (linear scaling applied). AdamW (beta1 = momentum) is an option
for short toy jobs, where SGD at the authors' lr moves the prompts too little.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_at_epoch(epoch: int, lr: float, train: TrainConfig) -> float:
    if epoch < train.warmup_epochs:
        return train.warmup_lr
    if train.schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - train.warmup_epochs) / train.epochs))


def build_optimizer(params, train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = list(params)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(train.momentum, 0.999), weight_decay=train.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, lr: float):
    """A per-epoch LambdaLR following `lr_at_epoch`; call `.step()` once after each epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_at_epoch(epoch, lr, train) / lr)
