"""FLOPs accounting: per-stage counts -> backbone, cumulative per exit, and an exit mix's mean.

The counts themselves (FLOPs = 2 x multiply-adds of every Conv and Linear layer run) come from
training.flops (torch hooks) and model_export.onnx_flops (the graphs); what they add up to is
decided here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def full_flops(per_stage: Sequence[tuple[int, int]]) -> int:
    """The backbone alone: every stage body plus the final classifier, no auxiliary heads."""
    return sum(body for body, _ in per_stage) + per_stage[-1][1]


def cumulative_flops(per_stage: Sequence[tuple[int, int]]) -> list[int]:
    """Cost of an image leaving at exit k: stage bodies and exit heads 0..k."""
    out: list[int] = []
    running = 0
    for body, head in per_stage:
        running += body + head
        out.append(running)
    return out


def cumulative_flops_ratio(per_stage: Sequence[tuple[int, int]]) -> list[float]:
    """cumulative_flops / full_flops; the last entry is slightly above 1 (the heads passed)."""
    full = full_flops(per_stage)
    return [c / full for c in cumulative_flops(per_stage)]


def expected_flops(exit_idx: np.ndarray, cumulative: Sequence[float] | np.ndarray) -> float:
    """Mean cost per image of an exit mix: exit_idx [N] (exit taken), cumulative [K] per exit."""
    return float(np.asarray(cumulative, dtype=np.float64)[np.asarray(exit_idx)].mean())


def exit_rates(exit_idx: np.ndarray, k: int) -> list[float]:
    """Fraction of the images leaving at each of the k exits."""
    idx = np.asarray(exit_idx)
    return [float(v) for v in np.bincount(idx, minlength=k) / idx.size]
