"""Balanced accuracy (mean per-class recall) and per-group accuracy for long-tailed labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Many / medium / few shot groups by training images per class (Liu et al. 2019).
MANY_SHOT = 100
FEW_SHOT = 20


def per_class_recall(hit: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """hit [N] (1 where the answer is right), labels [N] -> [C] recall, NaN for absent classes."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    right = np.bincount(labels, weights=np.asarray(hit, dtype=np.float64), minlength=num_classes)
    present = counts > 0
    return np.where(present, right / np.maximum(counts, 1), np.nan)


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in `labels`."""
    return float(np.nanmean(per_class_recall(pred == labels, labels, num_classes)))


def group_accuracy(recall: np.ndarray, classes: Sequence[int]) -> float | None:
    """Mean recall over the classes of a group that are present; None when none is."""
    values = np.asarray(recall, dtype=np.float64)[np.asarray(list(classes), dtype=np.int64)]
    present = ~np.isnan(values)
    return float(values[present].mean()) if present.any() else None


def class_thirds(train_class_counts: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Head / middle / tail thirds of the classes by training count (ties: lower index first)."""
    order = sorted(range(len(train_class_counts)), key=lambda c: (-train_class_counts[c], c))
    head, middle, tail = np.array_split(np.array(order, dtype=np.int64), 3)
    return sorted(head.tolist()), sorted(middle.tolist()), sorted(tail.tolist())


def class_groups(train_class_counts: Sequence[int]) -> dict[str, list[int]]:
    """head / middle / tail thirds by training frequency, plus the non-empty many/medium/few."""
    head, middle, tail = class_thirds(train_class_counts)
    groups = {"head": head, "middle": middle, "tail": tail}
    shots = {
        "many": [c for c, n in enumerate(train_class_counts) if n > MANY_SHOT],
        "medium": [c for c, n in enumerate(train_class_counts) if FEW_SHOT <= n <= MANY_SHOT],
        "few": [c for c, n in enumerate(train_class_counts) if n < FEW_SHOT],
    }
    groups.update({k: v for k, v in shots.items() if v})
    return groups


def summarize(
    pred: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]], num_classes: int
) -> dict[str, Any]:
    """top-1, balanced top-1 (mean per-class recall), per-class recall and each group's mean."""
    hit = pred == labels
    per_class = per_class_recall(hit, labels, num_classes)
    return {
        "top1": float(hit.mean()),
        "balanced_top1": float(np.nanmean(per_class)),
        "per_class": [None if np.isnan(v) else float(v) for v in per_class],
        "groups": {name: group_accuracy(per_class, cls) for name, cls in groups.items()},
    }
