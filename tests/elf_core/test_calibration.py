"""Calibration on synthetic probabilities where the right thresholds are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from elf_core import calibration as cal
from elf_core.accuracy import class_thirds
from elf_core.calibration import (
    CurvePoint,
    calibrate,
    evaluate_thresholds,
    pareto_front,
    threshold_curve,
)
from elf_core.exits import early_exit, softmax


def _probs(pred: np.ndarray, conf: np.ndarray, c: int) -> np.ndarray:
    """[N] predicted class and its probability -> [N, C], the rest spread evenly."""
    n = pred.size
    p = np.tile(((1.0 - conf) / (c - 1))[:, None], (1, c))
    p[np.arange(n), pred] = conf
    return p


def _easy_hard(n_per_class: int = 20, c: int = 4, hard_frac: float = 0.25):
    """Exit 0: easy images right at 0.9, hard ones wrong at 0.6. Final exit: all right at 0.8."""
    labels = np.repeat(np.arange(c), n_per_class)
    hard = np.zeros(labels.size, dtype=bool)
    for k in range(c):
        hard[k * n_per_class : k * n_per_class + int(hard_frac * n_per_class)] = True
    wrong = (labels + 1) % c
    p0 = _probs(np.where(hard, wrong, labels), np.where(hard, 0.6, 0.9), c)
    p1 = _probs(labels, np.full(labels.size, 0.8), c)
    return [p0, p1], labels, hard


def test_early_exit_takes_first_confident_exit() -> None:
    p0 = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    p1 = np.array([[0.2, 0.8], [0.1, 0.9], [0.5, 0.5]])
    p2 = np.array([[0.5, 0.5], [0.5, 0.5], [0.45, 0.55]])
    pred, idx = early_exit([p0, p1, p2], [0.8, 0.85])
    assert idx.tolist() == [0, 1, 2]
    assert pred.tolist() == [0, 1, 1]
    # K thresholds are accepted too; the last one is ignored (the final exit always answers).
    pred2, idx2 = early_exit([p0, p1, p2], [0.8, 0.85, 0.99])
    assert idx2.tolist() == [0, 1, 2] and pred2.tolist() == pred.tolist()
    # Threshold 0 sends everything out at exit 0; the threshold is inclusive (>=).
    assert early_exit([p0, p1, p2], [0.0, 0.0])[1].tolist() == [0, 0, 0]
    assert early_exit([p0, p1, p2], [0.9, 0.9])[1].tolist() == [0, 1, 2]


def test_early_exit_rejects_bad_input() -> None:
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        early_exit([p, p, p], [0.5])
    with pytest.raises(ValueError, match="shape"):
        early_exit([p, np.full((2, 2), 0.5)], [0.5])


def test_softmax_rows_sum_to_one_and_keep_order() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.argmax(axis=1).tolist() == [0, 2]
    assert np.isfinite(p).all()


def test_class_thirds_by_training_count() -> None:
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    head, middle, tail = class_thirds(counts)
    assert head == [0, 1, 2, 3] and middle == [4, 5, 6] and tail == [7, 8, 9]
    # Order comes from the counts, not the class index.
    assert class_thirds([1, 10, 100])[2] == [0]


def test_two_exits_zero_tolerance_finds_the_separating_threshold() -> None:
    probs, labels, hard = _easy_hard()
    res = calibrate(probs, labels, [0.4, 1.1], tolerance=0.0)
    assert res.best.balanced_accuracy == pytest.approx(1.0)
    assert res.chosen.balanced_accuracy == pytest.approx(1.0)
    t0 = res.chosen.thresholds[0]
    assert 0.6 < t0 <= 0.9 and res.chosen.thresholds[1] == 0.0
    expected_flops = 0.4 * (1 - hard.mean()) + 1.1 * hard.mean()
    assert res.chosen.flops_ratio == pytest.approx(expected_flops)
    assert res.chosen.exit_rates == pytest.approx((0.75, 0.25))
    assert res.chosen.exit_accuracy == pytest.approx((1.0, 1.0))
    # The final exit alone is right on everything here; as the backbone alone it costs 1.
    assert res.final_exit_only.balanced_accuracy == pytest.approx(1.0)
    assert res.final_exit_only.flops_ratio == pytest.approx(1.0)
    assert res.final_exit_only.exit_rates == (0.0, 1.0)


def test_tolerance_buys_flops_when_the_budget_allows() -> None:
    probs, labels, _ = _easy_hard(hard_frac=0.25)
    # Everything at exit 0 loses 25 points: a 0.3 budget takes it, a 0.2 budget does not.
    loose = calibrate(probs, labels, [0.4, 1.1], tolerance=0.3)
    assert loose.chosen.flops_ratio == pytest.approx(0.4)
    assert loose.chosen.balanced_accuracy == pytest.approx(0.75)
    assert loose.chosen.exit_rates == pytest.approx((1.0, 0.0))
    tight = calibrate(probs, labels, [0.4, 1.1], tolerance=0.2)
    assert tight.chosen.balanced_accuracy == pytest.approx(1.0)


def test_balanced_accuracy_and_tail_use_per_class_recall() -> None:
    # 3 classes, imbalanced test counts: 60 / 30 / 10. Exit 0 is wrong on all of class 2 only.
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    p0 = _probs(np.where(labels == 2, 0, labels), np.full(100, 0.95), 3)
    p1 = _probs(labels, np.full(100, 0.7), 3)
    pt = evaluate_thresholds([p0, p1], labels, [0.3, 1.0], [0.9], train_class_counts=[500, 50, 5])
    assert pt.accuracy == pytest.approx(0.9)
    assert pt.balanced_accuracy == pytest.approx(2 / 3)
    assert pt.tail_accuracy == pytest.approx(0.0)
    none = evaluate_thresholds([p0, p1], labels, [0.3, 1.0], [0.9])
    assert none.tail_accuracy is None


def _three_exit_problem():
    """Groups: A right at exit 0 (conf .95), B right only from exit 1 (exit 0 wrong at .7, exit 1
    right at .85), C right only at exit 2 (exits 0 and 1 wrong at .7 and .75)."""
    c, per = 5, 30
    labels = np.repeat(np.arange(c), per)
    group = np.tile(np.repeat([0, 1, 2], [15, 10, 5]), c)  # A, B, C per class
    wrong = (labels + 1) % c
    p0 = _probs(np.where(group == 0, labels, wrong), np.where(group == 0, 0.95, 0.7), c)
    p1 = _probs(
        np.where(group <= 1, labels, wrong),
        np.select([group == 0, group == 1], [0.9, 0.85], 0.75),
        c,
    )
    p2 = _probs(labels, np.full(labels.size, 0.6), c)
    return [p0, p1, p2], labels, group


def test_three_exits_exhaustive_finds_known_thresholds() -> None:
    probs, labels, group = _three_exit_problem()
    cum = [0.3, 0.7, 1.1]
    res = calibrate(probs, labels, cum, tolerance=0.0)
    t0, t1, t2 = res.chosen.thresholds
    assert 0.7 < t0 <= 0.95 and 0.75 < t1 <= 0.85 and t2 == 0.0
    assert res.chosen.balanced_accuracy == pytest.approx(1.0)
    rates = np.bincount(group, minlength=3) / group.size
    assert res.chosen.exit_rates == pytest.approx(tuple(rates))
    assert res.chosen.flops_ratio == pytest.approx(float(rates @ np.array(cum)))
    assert res.chosen.flops_ratio < res.final_exit_only.flops_ratio
    # The chosen point sits on the Pareto front, and the front is strictly increasing.
    assert res.chosen in res.pareto
    accs = [p.balanced_accuracy for p in res.pareto]
    flops = [p.flops_ratio for p in res.pareto]
    assert accs == sorted(accs) and len(set(accs)) == len(accs) and flops == sorted(flops)


def test_four_exits_coordinate_descent_matches_exhaustive_on_known_problem(monkeypatch) -> None:
    probs3, labels, _ = _three_exit_problem()
    # Insert a useless exit between 0 and 1 (always wrong, confident .99): it must be switched off.
    c = probs3[0].shape[1]
    useless = _probs((labels + 2) % c, np.full(labels.size, 0.99), c)
    probs = [probs3[0], useless, probs3[1], probs3[2]]
    cum = [0.3, 0.5, 0.8, 1.2]
    greedy = calibrate(probs, labels, cum, tolerance=0.0)
    assert greedy.chosen.thresholds[1] > 0.99
    assert greedy.chosen.balanced_accuracy == pytest.approx(1.0)
    monkeypatch.setattr(cal, "EXHAUSTIVE_MAX_EXITS", 4)
    exhaustive = calibrate(probs, labels, cum, tolerance=0.0, n_quantiles=5)
    assert greedy.chosen.flops_ratio == pytest.approx(exhaustive.chosen.flops_ratio)
    assert greedy.best.balanced_accuracy == pytest.approx(exhaustive.best.balanced_accuracy)


def test_best_is_not_the_final_exit_when_early_exits_help() -> None:
    # ELF's case: the final exit is weak on easy images that exit 0 gets right.
    probs, labels, hard = _easy_hard()
    c = probs[0].shape[1]
    final_pred = np.where(hard, labels, (labels + 1) % c)  # final exit right only on hard ones
    probs[1] = _probs(final_pred, np.full(labels.size, 0.8), c)
    res = calibrate(probs, labels, [0.4, 1.1], tolerance=0.005)
    assert res.final_exit_only.balanced_accuracy == pytest.approx(hard.mean())
    assert res.best.balanced_accuracy == pytest.approx(1.0)
    assert res.chosen.balanced_accuracy >= res.best.balanced_accuracy - 0.005


def test_curve_covers_both_ends_and_is_sorted() -> None:
    probs, labels, _ = _easy_hard()
    curve = threshold_curve(probs, labels, [0.4, 1.1])
    flops = [p.flops_ratio for p in curve]
    assert flops == sorted(flops)
    assert flops[0] == pytest.approx(0.4)
    assert max(flops) == pytest.approx(1.1)
    assert all(len(p.thresholds) == 2 and p.thresholds[-1] == 0.0 for p in curve)
    assert all(sum(p.exit_rates) == pytest.approx(1.0) for p in curve)


def test_pareto_front_drops_dominated_points() -> None:
    def pt(f: float, a: float) -> CurvePoint:
        return CurvePoint((0.5, 0.0), a, a, None, f, (0.5, 0.5), (None, None))

    pts = [pt(0.5, 0.8), pt(0.3, 0.7), pt(0.6, 0.75), pt(0.9, 0.9), pt(0.3, 0.6), pt(1.0, 0.9)]
    front = pareto_front(pts)
    assert [(p.flops_ratio, p.balanced_accuracy) for p in front] == [
        (0.3, 0.7),
        (0.5, 0.8),
        (0.9, 0.9),
    ]


def test_calibrate_rejects_bad_arguments() -> None:
    probs, labels, _ = _easy_hard()
    with pytest.raises(ValueError, match="tolerance"):
        calibrate(probs, labels, [0.4, 1.1], tolerance=1.5)
    with pytest.raises(ValueError, match="FLOPs"):
        calibrate(probs, labels, [0.4], tolerance=0.0)
    with pytest.raises(ValueError, match="labels"):
        calibrate(probs, labels + 10, [0.4, 1.1])
