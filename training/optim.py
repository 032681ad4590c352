"""SGD with a per-step learning-rate schedule: linear warm-up, then cosine or step decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import OptimConfig, TrainConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, opt: OptimConfig) -> float:
    """Linear warm-up over warmup_epochs, then cosine to 0 or step decay; per optimizer step.

    The warm-up never takes the whole run: at most epochs - 1 epochs.
    """
    warm = min(opt.warmup_epochs, epochs - 1) * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if opt.schedule == "cosine":
        total = max(1, epochs * steps_per_epoch - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / total)))
    milestones = opt.milestones or (round(0.6 * epochs), round(0.8 * epochs))
    epoch = step // steps_per_epoch
    return float(opt.gamma ** sum(epoch >= m for m in milestones))


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    o = cfg.optim
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg.epochs, o)
    )
    return optimizer, scheduler
