"""Threshold calibration (numpy only: no torch, no onnx).

The exit rule is elf_core.exits: an image leaves at the first exit k whose softmax maximum
reaches thresholds[k]; the last exit always answers. The trade-off curve searches per-exit
thresholds for the K-1 auxiliary exits: exhaustively over a candidate grid for K <= 3 exits, by
coordinate descent on Lagrangian objectives (expected FLOPs - lambda * balanced accuracy)
beyond. Calibration picks the cheapest point whose balanced accuracy is at most `tolerance` below
the best point of the curve; with a `tail_tolerance` (tail protection), that point must also keep
the protected classes' accuracy (the tail third, or named classes) at most `tail_tolerance` below
their best among those points.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from elf_core.accuracy import class_thirds, per_class_recall
from elf_core.exits import check_probs, exit_index, exit_thresholds
from elf_core.flops import exit_rates, expected_flops
from elf_core.threshold_search import (
    candidate_thresholds,
    constrained,
    descend,
    lagrangian_sweep,
)

EXHAUSTIVE_MAX_EXITS = 3

# The chosen point may lose this much balanced accuracy against the best point (half a point).
DEFAULT_TOLERANCE = 0.005


@dataclass(frozen=True)
class CurvePoint:
    """One operating point. thresholds has K values; the last one is 0 (the final exit answers)."""

    thresholds: tuple[float, ...]
    balanced_accuracy: float  # mean per-class recall over the classes present in the labels
    accuracy: float  # plain top-1
    tail_accuracy: float | None  # mean recall over the tail classes, None when none is known
    flops_ratio: float  # expected cumulative FLOPs of the exit taken / full backbone FLOPs
    exit_rates: tuple[float, ...]  # fraction of images leaving at each exit
    exit_accuracy: tuple[float | None, ...]  # top-1 of the images leaving at each exit
    # Mean recall over the protected classes (tail protection), None when none are protected.
    protected_accuracy: float | None = None


class CalibrationError(ValueError):
    """Calibration options that cannot apply to these data (e.g. an unknown protected class)."""


@dataclass(frozen=True)
class TailProtection:
    """What tail protection asked for and what it cost; absent when calibration is plain."""

    tail_tolerance: float
    classes: tuple[int, ...]  # the protected classes: the tail third unless named
    named: bool  # True: classes named by the user; False: the tail third
    reference: float  # their best validation accuracy among the points within `tolerance`
    plain_chosen: CurvePoint  # what plain calibration (balanced accuracy alone) would choose


@dataclass(frozen=True)
class CalibrationResult:
    tolerance: float
    best: CurvePoint  # highest balanced accuracy on the curve (cheapest among ties)
    chosen: CurvePoint  # cheapest point within `tolerance` of best (and the tail's, if protected)
    final_exit_only: CurvePoint  # every image answered by the final exit
    curve: list[CurvePoint]  # every point searched, sorted by flops_ratio
    pareto: list[CurvePoint]  # the points no other point beats in both FLOPs and accuracy
    protection: TailProtection | None = None


class _Evaluator:
    """Precomputed per-exit confidence and correctness; scores one threshold vector in O(K N)."""

    def __init__(
        self,
        probs: Sequence[np.ndarray],
        labels: np.ndarray,
        cum_flops_ratio: Sequence[float],
        tail_classes: Sequence[int] | None,
        protected_classes: Sequence[int] | None = None,
    ) -> None:
        check_probs(probs)
        stacked = np.stack([np.asarray(p) for p in probs])  # [K, N, C]
        self.k, n, c = stacked.shape
        self.labels = np.asarray(labels, dtype=np.int64)
        if (
            self.labels.shape != (n,)
            or self.labels.min(initial=0) < 0
            or self.labels.max(initial=0) >= c
        ):
            raise ValueError(f"labels must be [N]={n} class indices in [0, {c})")
        if len(cum_flops_ratio) != self.k:
            raise ValueError(f"need {self.k} cumulative FLOPs ratios, got {len(cum_flops_ratio)}")
        self.conf = stacked.max(axis=2)  # [K, N]
        self.correct = stacked.argmax(axis=2) == self.labels[None, :]  # [K, N]
        self.cum = np.asarray(cum_flops_ratio, dtype=np.float64)
        self.counts = np.bincount(self.labels, minlength=c).astype(np.float64)
        self.present = self.counts > 0
        self.tail = self._mask(tail_classes, c)
        self.protected = None if protected_classes is None else self._mask(protected_classes, c)
        self.cache: dict[tuple[float, ...], CurvePoint] = {}

    def _mask(self, classes: Sequence[int] | None, c: int) -> np.ndarray:
        """[C] bool: the given classes that occur in the labels."""
        mask = np.zeros(c, dtype=bool)
        if classes is not None:
            bad = [k for k in classes if not 0 <= k < c]
            if bad:
                raise CalibrationError(f"classes {bad} do not exist (the model has {c} classes)")
            mask[np.asarray(list(classes), dtype=np.int64)] = True
        return mask & self.present

    def point(self, thresholds: Sequence[float]) -> CurvePoint:
        t = exit_thresholds(thresholds, self.k)
        key = tuple(float(v) for v in t)
        if key in self.cache:
            return self.cache[key]
        idx = exit_index(self.conf, t)
        hit = self.correct[idx, np.arange(idx.size)]
        recall = per_class_recall(hit, self.labels, self.counts.size)  # [C], NaN where absent
        n_exit = np.bincount(idx, minlength=self.k)
        hit_exit = np.bincount(idx, weights=hit, minlength=self.k)
        p = CurvePoint(
            thresholds=key,
            balanced_accuracy=float(recall[self.present].mean()),
            accuracy=float(hit.mean()),
            tail_accuracy=float(recall[self.tail].mean()) if self.tail.any() else None,
            flops_ratio=expected_flops(idx, self.cum),
            exit_rates=tuple(exit_rates(idx, self.k)),
            exit_accuracy=tuple(
                float(h / m) if m else None for h, m in zip(hit_exit, n_exit, strict=True)
            ),
            protected_accuracy=(
                float(recall[self.protected].mean())
                if self.protected is not None and self.protected.any()
                else None
            ),
        )
        self.cache[key] = p
        return p


def pareto_front(points: Sequence[CurvePoint]) -> list[CurvePoint]:
    """Points sorted by FLOPs whose balanced accuracy beats every cheaper (or equal-cost) point."""
    front: list[CurvePoint] = []
    for p in sorted(points, key=lambda q: (q.flops_ratio, -q.balanced_accuracy)):
        if not front or p.balanced_accuracy > front[-1].balanced_accuracy:
            front.append(p)
    return front


def threshold_curve(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    cum_flops_ratio: Sequence[float],
    *,
    tail_classes: Sequence[int] | None = None,
    train_class_counts: Sequence[int] | None = None,
    n_quantiles: int = 33,
) -> list[CurvePoint]:
    """Every operating point searched, sorted by expected FLOPs ratio."""
    ev = _make_evaluator(probs, labels, cum_flops_ratio, tail_classes, train_class_counts)
    _search(ev, n_quantiles)
    return _distinct(ev.cache.values())


def evaluate_thresholds(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    cum_flops_ratio: Sequence[float],
    thresholds: Sequence[float],
    *,
    tail_classes: Sequence[int] | None = None,
    train_class_counts: Sequence[int] | None = None,
    protect_classes: Sequence[int] | None = None,
) -> CurvePoint:
    """The numbers of one fixed threshold vector (e.g. on the test set after calibration)."""
    ev = _make_evaluator(
        probs, labels, cum_flops_ratio, tail_classes, train_class_counts,
        protect_classes=protect_classes,
    )  # fmt: skip
    return ev.point(thresholds)


def final_exit_only(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    cum_flops_ratio: Sequence[float],
    *,
    tail_classes: Sequence[int] | None = None,
    train_class_counts: Sequence[int] | None = None,
    protect_classes: Sequence[int] | None = None,
) -> CurvePoint:
    """Every image answered by the final exit, i.e. the backbone alone: flops_ratio is 1 by
    definition (no auxiliary heads run). Thresholds are recorded as 1 (never leave early) and the
    point is evaluated exactly (a saturated softmax reaching 1.0 still does not leave early)."""
    ev = _make_evaluator(
        probs, labels, cum_flops_ratio, tail_classes, train_class_counts,
        protect_classes=protect_classes,
    )  # fmt: skip
    ev.conf[:-1] = -1.0
    ev.cum[-1] = 1.0
    return ev.point([1.0] * (ev.k - 1))


def calibrate(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    cum_flops_ratio: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    tail_classes: Sequence[int] | None = None,
    train_class_counts: Sequence[int] | None = None,
    n_quantiles: int = 33,
    tail_tolerance: float | None = None,
    protect_classes: Sequence[int] | None = None,
) -> CalibrationResult:
    """Best balanced accuracy on the curve, and the cheapest point at most `tolerance` below it.

    With `tail_tolerance`, the chosen point must also keep the protected classes (`protect_classes`,
    default the tail third) at most `tail_tolerance` below their best accuracy among the points
    that meet `tolerance` (so such a point always exists: the one where they are best).

    Args:
        probs: Per exit, the softmax probabilities `[N, C]` of the validation images.
        labels: The images' classes `[N]`.
        cum_flops_ratio: Each exit's cumulative FLOPs as a fraction of the backbone's.
        tolerance: Accepted loss of balanced top-1 against the best point, in [0, 1].
        tail_classes: The tail third's classes (default: from `train_class_counts`).
        train_class_counts: Training images per class (defines head, middle and tail).
        n_quantiles: Candidate thresholds per exit (quantiles of its confidences).
        tail_tolerance: Tail protection, in [0, 1]; `None` = off.
        protect_classes: The classes tail protection keeps (default the tail third).

    Returns:
        The curve, its best point and the chosen point with its thresholds.

    Raises:
        ValueError: A tolerance outside [0, 1].
        CalibrationError: Protected classes without a tail tolerance.
    """
    for name, value in (("tolerance", tolerance), ("tail_tolerance", tail_tolerance)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if protect_classes is not None and tail_tolerance is None:
        raise CalibrationError("protected classes need a tail tolerance")
    ev = _make_evaluator(probs, labels, cum_flops_ratio, tail_classes, train_class_counts)
    protected: list[int] | None = None
    if tail_tolerance is not None:
        protected = _protected(ev, protect_classes)
        ev.protected = ev._mask(protected, ev.counts.size)
    cands = _search(ev, n_quantiles)
    if ev.k > EXHAUSTIVE_MAX_EXITS:
        # The Lagrangian sweep only finds the convex hull: refine under the actual constraint.
        best = _best(list(ev.cache.values()))
        floor = best.balanced_accuracy - tolerance - 1e-12
        descend(ev, cands, best.thresholds[:-1], partial(constrained, floor=floor))
    curve = _distinct(ev.cache.values())
    best = _best(curve)
    floor = best.balanced_accuracy - tolerance - 1e-12
    ok = [p for p in curve if p.balanced_accuracy >= floor]
    if tail_tolerance is not None and ev.k > EXHAUSTIVE_MAX_EXITS:
        # As above: search the cheapest point under both constraints from the tail's best one.
        top = max(ok, key=lambda p: p.protected_accuracy or 0.0)
        pfloor = (top.protected_accuracy or 0.0) - tail_tolerance - 1e-12
        cost = partial(_both, floor=floor, pfloor=pfloor)
        descend(ev, cands, top.thresholds[:-1], cost)
        curve = _distinct(ev.cache.values())
        ok = [p for p in curve if p.balanced_accuracy >= floor]
    chosen = _cheapest(ok)
    protection = None
    if tail_tolerance is not None and protected is not None:
        chosen, protection = _protect(ok, tail_tolerance, protected, protect_classes is not None)
    kw = {"tail_classes": tail_classes, "train_class_counts": train_class_counts}
    final = final_exit_only(probs, labels, cum_flops_ratio, protect_classes=protected, **kw)
    return CalibrationResult(tolerance, best, chosen, final, curve, pareto_front(curve), protection)


def _protected(ev: _Evaluator, protect_classes: Sequence[int] | None) -> list[int]:
    """The protected classes: the named ones, else the tail third the evaluator knows."""
    if protect_classes is not None:
        if not protect_classes:
            raise CalibrationError("name at least one protected class")
        return sorted({int(c) for c in protect_classes})
    if not ev.tail.any():
        raise CalibrationError("tail protection needs the tail classes (or named classes)")
    return [int(c) for c in np.flatnonzero(ev.tail)]


def _protect(
    ok: list[CurvePoint], tail_tolerance: float, classes: Sequence[int], named: bool
) -> tuple[CurvePoint, TailProtection]:
    """The cheapest of `ok` whose protected accuracy is within tail_tolerance of their best."""
    acc = [p.protected_accuracy for p in ok]
    if any(a is None for a in acc):
        raise CalibrationError(f"no validation images of the protected classes {list(classes)}")
    reference = max(a for a in acc if a is not None)
    floor = reference - tail_tolerance - 1e-12
    kept = [p for p in ok if (p.protected_accuracy or 0.0) >= floor]
    protection = TailProtection(tail_tolerance, tuple(classes), named, reference, _cheapest(ok))
    return _cheapest(kept), protection


def _both(p: CurvePoint, floor: float, pfloor: float) -> float:
    ok = p.balanced_accuracy >= floor and (p.protected_accuracy or 0.0) >= pfloor
    return p.flops_ratio if ok else np.inf


def _cheapest(points: list[CurvePoint]) -> CurvePoint:
    return min(points, key=lambda p: (p.flops_ratio, -p.balanced_accuracy))


def _distinct(points: Iterable[CurvePoint]) -> list[CurvePoint]:
    """Sorted by FLOPs; of threshold vectors with the same outcome (many are: a threshold after an
    exit that takes everything does nothing) only the first in (FLOPs, -accuracy, thresholds)."""
    seen: set[tuple[float, ...]] = set()
    out: list[CurvePoint] = []
    for p in sorted(points, key=lambda q: (q.flops_ratio, -q.balanced_accuracy, q.thresholds)):
        key = (p.flops_ratio, p.balanced_accuracy, p.accuracy, *p.exit_rates)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _best(points: list[CurvePoint]) -> CurvePoint:
    return max(points, key=lambda p: (p.balanced_accuracy, -p.flops_ratio))


def _make_evaluator(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    cum_flops_ratio: Sequence[float],
    tail_classes: Sequence[int] | None,
    train_class_counts: Sequence[int] | None,
    *,
    protect_classes: Sequence[int] | None = None,
) -> _Evaluator:
    if tail_classes is None and train_class_counts is not None:
        tail_classes = class_thirds(train_class_counts)[2]
    return _Evaluator(probs, labels, cum_flops_ratio, tail_classes, protect_classes)


def _search(ev: _Evaluator, n_quantiles: int) -> list[list[float]]:
    cands = [candidate_thresholds(ev.conf[j], n_quantiles) for j in range(ev.k - 1)]
    if ev.k <= EXHAUSTIVE_MAX_EXITS:
        for combo in itertools.product(*cands):
            ev.point(combo)
    else:
        lagrangian_sweep(ev, cands)
    ev.point([1.0] * (ev.k - 1))
    return cands
