"""Batch-wise augmentation and normalization in torch (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    padding: int = 2  # random crop offset range is [-padding, padding] in each direction
    flip: bool = True  # horizontal flip with probability 1/2


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [B, C, H, W] -> float32 [B, C, H, W]: (x / 255 - mean) / std, per channel."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"{x.shape[1]} channels but mean {list(mean)} and std {list(std)}")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


def random_crop_flip(
    x: Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop of the zero-padded batch back to [H, W], then (if flip) a random horizontal flip.

    x: [B, C, H, W] of any dtype. Each image gets its own offsets and flip. Random numbers are drawn
    on the CPU from `generator`, so the result depends only on the generator's state, not on the
    device. Output pixel (i, j) of image b is padded[b, :, oy_b + i, ox_b + j'] with j' = j or
    W - 1 - j when flipped; oy, ox uniform in [0, 2 * padding].
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = oy[:, None] + torch.arange(h)  # [B, H]
    cols = ox[:, None] + torch.arange(w)  # [B, W]
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
    rows = rows.to(x.device)[:, None, :, None].expand(b, c, h, w + 2 * padding)
    cols = cols.to(x.device)[:, None, None, :].expand(b, c, h, w)
    # two gathers (rows, then columns) are much cheaper than one 4-index advanced indexing
    return padded.gather(2, rows).gather(3, cols)


def augment(x: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    return random_crop_flip(x, cfg.padding, cfg.flip, generator)
