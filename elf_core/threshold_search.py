"""Threshold search beyond exhaustive grids: coordinate descent over per-exit candidates.

Used by elf_core.calibration for more than EXHAUSTIVE_MAX_EXITS exits. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np

# 0, 0.05, ..., 1 and a finer grid near 1, where confident exits live.
FIXED_GRID = (*(round(0.05 * i, 2) for i in range(21)), 0.97, 0.98, 0.99, 0.995, 0.999)
LAMBDAS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 1e6)


class Point(Protocol):
    @property
    def flops_ratio(self) -> float: ...
    @property
    def balanced_accuracy(self) -> float: ...


class Scorer(Protocol):
    """Scores (and caches) one threshold vector: K-1 or K values."""

    k: int

    def point(self, thresholds: Sequence[float]) -> Any: ...


def candidate_thresholds(conf: np.ndarray, n_quantiles: int = 33) -> list[float]:
    """Quantiles of one exit's confidence [N] plus FIXED_GRID, sorted, unique, within [0, 1]."""
    qs = np.quantile(conf, np.linspace(0.0, 1.0, n_quantiles)) if conf.size else np.array([])
    values = np.clip(np.concatenate([qs, np.asarray(FIXED_GRID)]), 0.0, 1.0)
    return sorted({float(v) for v in values})


def descend(
    ev: Scorer,
    cands: list[list[float]],
    start: Sequence[float],
    cost: Callable[[Any], float],
    sweeps: int = 4,
) -> list[float]:
    """Coordinate descent on `cost` over the candidate grid from `start`; caches every point."""
    t = list(start)
    for _ in range(sweeps):
        changed = False
        for j in range(ev.k - 1):
            scores = [cost(ev.point([*t[:j], v, *t[j + 1 :]])) for v in cands[j]]
            i = int(np.argmin(scores))
            if scores[i] < cost(ev.point(t)) - 1e-12:
                t[j], changed = cands[j][i], True
        if not changed:
            break
    return t


def lagrangian_sweep(ev: Scorer, cands: list[list[float]]) -> None:
    """Points minimising flops - lambda * balanced accuracy, for each lambda (the convex hull)."""
    for lam in LAMBDAS:
        descend(ev, cands, [1.0] * (ev.k - 1), partial(lagrangian, lam=lam))


def lagrangian(p: Point, lam: float) -> float:
    return p.flops_ratio - lam * p.balanced_accuracy


def constrained(p: Point, floor: float) -> float:
    return p.flops_ratio if p.balanced_accuracy >= floor else np.inf
