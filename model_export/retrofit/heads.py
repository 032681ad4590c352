"""Exit heads with capacity, trained on cached features; the backbone is never run in training.

Head: `blocks` x (3x3 conv, stride 2 while the map is larger than 8 px, BatchNorm, ReLU), global
average pool, linear. Loss per head: balanced softmax on the labels (Ren et al. 2020, as in
training.losses), plus `distill` x KL divergence to the original model's own softened prediction
(no labels needed for that part).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from model_export.retrofit.cuts import Shape
from model_export.retrofit.features import FeatureCache
from training.losses import balanced_softmax

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    blocks: int = 2  # conv blocks before the pool (0: pool + linear only)
    width: int | None = None  # conv channels; None: the cut's channels, clamped to [32, 128]
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    distill: float = 0.0  # weight of the distillation term, in [0, 1]
    temperature: float = 2.0
    seed: int = 0
    threads: int | None = None  # torch intra-op threads while training; None: torch's default

    def __post_init__(self) -> None:
        if self.blocks < 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("head blocks >= 0, epochs >= 1 and batch size >= 1 are required")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be in [0, 1], got {self.distill}")


class ExitHead(nn.Module):
    """features [B, C, H, W] -> logits [B, num_classes]."""

    def __init__(self, shape: Shape, num_classes: int, blocks: int, width: int | None) -> None:
        super().__init__()
        c, h, w = shape
        width = width or min(max(c, 32), 128)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            stride = 2 if min(h, w) > 8 else 1
            layers += [
                nn.Conv2d(c, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            c, h, w = width, (h - 1) // stride + 1, (w - 1) // stride + 1
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def head_loss(
    logits: Tensor, y: Tensor, teacher: Tensor, log_prior: Tensor, cfg: HeadConfig
) -> Tensor:
    loss = balanced_softmax(logits, y, log_prior).mean()
    if cfg.distill == 0.0:
        return loss
    t = cfg.temperature
    kd = F.kl_div(
        F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    return (1.0 - cfg.distill) * loss + cfg.distill * t * t * kd


def train_heads(
    shapes: Sequence[Shape],
    num_classes: int,
    train: FeatureCache,
    class_counts: Sequence[int],
    cfg: HeadConfig,
    *,
    progress: bool = True,
) -> list[ExitHead]:
    """One head per cut, all trained in the same pass over the cached features."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(shapes, num_classes, train, class_counts, cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    shapes: Sequence[Shape],
    num_classes: int,
    train: FeatureCache,
    class_counts: Sequence[int],
    cfg: HeadConfig,
    *,
    progress: bool,
) -> list[ExitHead]:
    torch.manual_seed(cfg.seed)
    heads = [ExitHead(s, num_classes, cfg.blocks, cfg.width) for s in shapes]
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train.labels)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    total = float(sum(class_counts))
    log_prior = torch.tensor([math.log(max(c, 1) / total) for c in class_counts])
    y_all = torch.from_numpy(train.labels)
    t_all = torch.from_numpy(train.teacher)
    g = torch.Generator().manual_seed(cfg.seed)
    for h in heads:
        h.train()
    for epoch in tqdm(range(cfg.epochs), desc="exit heads", disable=not progress, leave=False):
        order = torch.randperm(n, generator=g)
        running = torch.zeros(len(heads))
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = torch.zeros(())
            for k, h in enumerate(heads):
                x = torch.from_numpy(train.features[k][idx.numpy()]).float()
                lk = head_loss(h(x), y_all[idx], t_all[idx], log_prior, cfg)
                running[k] += float(lk.detach()) * len(idx)
                loss = loss + lk
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log.debug("epoch %d: head losses %s", epoch + 1, (running / n).tolist())
    return [h.eval() for h in heads]


@torch.no_grad()
def head_logits(head: ExitHead, features: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """float32 logits [N, num_classes] of `head` on cached features [N, C, H, W]."""
    outs = [
        head(torch.from_numpy(features[i : i + batch_size]).float()).numpy()
        for i in range(0, len(features), batch_size)
    ]
    return np.concatenate(outs)
