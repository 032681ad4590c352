"""The exit rule: an image leaves at the first exit whose softmax maximum reaches that exit's
threshold; the last exit always answers (its threshold is recorded as 0).

Training's evaluation, export's calibration, the server's batcher and the benchmarks all decide
exits with these functions, so the calibrated exit mix is the served one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """[N, C] logits -> [N, C] probabilities (float64, numerically stable)."""
    return softmax_max(logits)[0]


def softmax_max(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] logits -> (probabilities [N, C] float64, their row maxima [N]) in one pass.

    With z = logits - max, the largest probability is exp(0) / sum(exp(z)) = 1 / sum: the same
    float64 division that puts it in the probabilities, so it equals probs.max(axis=1) bit for
    bit without another reduction over [N, C]."""
    e = logits.astype(np.float64)  # a fresh [N, C] array: the steps below work in place
    e -= e.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    total = e.sum(axis=1, keepdims=True)  # [N, 1]
    e /= total
    return e, 1.0 / total[:, 0]


def _check_count(values: Sequence[float], k: int) -> None:
    if len(values) not in (k - 1, k):
        raise ValueError(f"{k} exits: send {k - 1} or {k} thresholds, got {len(values)}")


def check_thresholds(values: Sequence[float], k: int) -> None:
    """Raise ValueError unless `values` are K-1 (auxiliary exits) or K thresholds in [0, 1], the
    K-th (the last exit, which always answers) being 0."""
    if not values:
        raise ValueError(f"{k} exits: send {k - 1} or {k} thresholds, got none")
    _check_count(values, k)
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"thresholds must lie in [0, 1], got {list(values)}")
    if len(values) == k and values[-1] != 0.0:
        raise ValueError("the last exit always answers: its threshold must be 0")


def exit_thresholds(values: Sequence[float], k: int) -> np.ndarray:
    """K-1 or K thresholds -> [K] float64 with the last set to 0 (the final exit answers)."""
    _check_count(values, k)
    t = np.zeros(k, dtype=np.float64)
    t[: k - 1] = np.asarray(values, dtype=np.float64)[: k - 1]
    return t


def leaves(probs: np.ndarray, thresholds: np.ndarray | float, *, last: bool) -> np.ndarray:
    """probs [N, C] of one exit, thresholds [N] (per row) or one value -> bool [N]: which rows
    leave here. At the last exit every row leaves."""
    return leaves_at(probs.max(axis=1), thresholds, last=last)


def leaves_at(conf: np.ndarray, thresholds: np.ndarray | float, *, last: bool) -> np.ndarray:
    """`leaves` on the softmax maxima conf [N] (from `softmax_max`) instead of probs [N, C]."""
    if last:
        return np.ones(conf.shape[0], dtype=bool)
    return np.asarray(conf >= thresholds)


def exit_index(conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """conf [K, N] softmax maxima, thresholds [K] -> [N] index of the first exit that takes each
    image (the same comparison as `leaves`, for all exits at once)."""
    leave = conf >= thresholds[:, None]
    leave[-1] = True
    return np.asarray(np.argmax(leave, axis=0))


def check_probs(probs: Sequence[np.ndarray]) -> None:
    if len(probs) < 1:
        raise ValueError("need the probabilities of at least one exit")
    shape = probs[0].shape
    if len(shape) != 2 or any(p.shape != shape for p in probs):
        raise ValueError(
            f"every exit needs [N, C] probabilities of one shape, got {[p.shape for p in probs]}"
        )


def early_exit(
    probs: Sequence[np.ndarray], thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """probs[k]: [N, C] softmax of exit k -> (prediction [N], exit index [N])."""
    check_probs(probs)
    stacked = np.stack([np.asarray(p) for p in probs])  # [K, N, C]
    idx = exit_index(stacked.max(axis=2), exit_thresholds(thresholds, len(probs)))
    preds = stacked.argmax(axis=2)  # [K, N]
    return preds[idx, np.arange(idx.size)], idx
