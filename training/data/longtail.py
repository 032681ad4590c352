"""The CIFAR-LT long-tail construction and the balanced validation split from unused images."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training.data.config import DatasetError


def long_tail_counts(n_max: int, imbalance_ratio: float, num_classes: int) -> list[int]:
    """n_c = floor(n_max * rho^(-c/(C-1))) for c = 0..C-1 (class 0 is the head).

    Written as n_max * (1/rho)^(c/(C-1)), as in the CIFAR-LT reference code (Cao et al. 2019),
    so the floors match the published counts (12,406 images for 5000, 100, 10).
    """
    if n_max < 1 or num_classes < 1 or imbalance_ratio < 1.0:
        raise ValueError(
            f"need n_max >= 1, num_classes >= 1, imbalance_ratio >= 1; got {n_max}, "
            f"{num_classes}, {imbalance_ratio}"
        )
    if num_classes == 1:
        return [n_max]
    counts = [
        math.floor(n_max * (1.0 / imbalance_ratio) ** (c / (num_classes - 1)))
        for c in range(num_classes)
    ]
    if counts[-1] < 1:
        raise ValueError(
            f"n_max {n_max} with imbalance ratio {imbalance_ratio} leaves the last class empty"
        )
    return counts


def counts_in_class_order(
    counts_by_rank: list[int], class_order: tuple[int, ...] | None
) -> list[int]:
    """Per-class counts: class class_order[r] gets counts_by_rank[r]; None keeps class c at rank c.

    A harder long tail puts the hardest classes last (rarest), as users' rare classes usually are.
    """
    if class_order is None:
        return list(counts_by_rank)
    if len(class_order) != len(counts_by_rank):
        raise DatasetError(
            f"--class-order names {len(class_order)} classes; the data set has "
            f"{len(counts_by_rank)}"
        )
    counts = [0] * len(counts_by_rank)
    for rank, c in enumerate(class_order):
        counts[c] = counts_by_rank[rank]
    return counts


def long_tail_indices(
    labels: Tensor,
    counts: list[int],
    val_per_class: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Indices (int64, ascending) of the long-tailed train subset and the balanced val split.

    For each class c the class's images are shuffled with a generator seeded by `seed`; the first
    counts[c] go to train, the next val_per_class to val. The two are disjoint by construction.
    """
    g = torch.Generator().manual_seed(seed)
    train_parts: list[Tensor] = []
    val_parts: list[Tensor] = []
    for c, n_c in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        available = int(members.numel())
        if available < n_c + val_per_class:
            raise DatasetError(
                f"class {c} has {available} training images; the long-tailed subset takes {n_c} "
                f"and the validation split needs {val_per_class} more of the unused ones "
                f"(only {max(available - n_c, 0)} left). Lower --n-max or --val-per-class."
            )
        shuffled = members[torch.randperm(available, generator=g)]
        train_parts.append(shuffled[:n_c])
        val_parts.append(shuffled[n_c : n_c + val_per_class])
    train = torch.cat(train_parts).sort().values
    val = torch.cat(val_parts).sort().values
    return train, val
