"""Tail-protected calibration on constructed curves where every point's numbers are known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from elf_core import calibration as cal
from elf_core.calibration import CalibrationError, calibrate

C, N = 6, 20  # classes 4 and 5 are the tail (the last third by training count)
COUNTS = [600, 500, 400, 300, 20, 10]
CUM = [0.4, 1.0]


def _probs(pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    p = np.tile(((1.0 - conf) / (C - 1))[:, None], (1, C))
    p[np.arange(pred.size), pred] = conf
    return p


def _problem() -> tuple[list[np.ndarray], np.ndarray]:
    """Exit 0: head classes right at 0.9; tail classes at 0.7, a quarter of them wrong.
    Final exit: everything right at 0.8. So the exit-0 threshold t gives three points:
      t <= 0.7: all leave at 0: balanced (4 + 2 * 0.75) / 6 = 0.9167, tail 0.75, FLOPs 0.4
      0.7 < t <= 0.9: head leaves at 0, tail at the end: balanced 1, tail 1, FLOPs 0.6
      t > 0.9: all at the end: balanced 1, tail 1, FLOPs 1."""
    labels = np.repeat(np.arange(C), N)
    tail = labels >= 4
    wrong = tail & (np.arange(labels.size) % N < N // 4)
    p0 = _probs(np.where(wrong, (labels + 1) % C, labels), np.where(tail, 0.7, 0.9))
    p1 = _probs(labels, np.full(labels.size, 0.8))
    return [p0, p1], labels


def test_plain_calibration_spends_the_tail_within_the_balanced_tolerance() -> None:
    probs, labels = _problem()
    res = calibrate(probs, labels, CUM, tolerance=0.1, train_class_counts=COUNTS)
    assert res.protection is None and res.chosen.protected_accuracy is None
    assert res.chosen.balanced_accuracy == pytest.approx(5.5 / 6)
    assert res.chosen.tail_accuracy == pytest.approx(0.75)
    assert res.chosen.flops_ratio == pytest.approx(0.4)


def test_tail_tolerance_keeps_the_tail_at_its_best_and_reports_the_cost() -> None:
    probs, labels = _problem()
    res = calibrate(
        probs, labels, CUM, tolerance=0.1, train_class_counts=COUNTS, tail_tolerance=0.1
    )
    assert res.chosen.tail_accuracy == pytest.approx(1.0)
    assert res.chosen.protected_accuracy == pytest.approx(1.0)
    assert res.chosen.balanced_accuracy == pytest.approx(1.0)
    assert res.chosen.flops_ratio == pytest.approx(4 / 6 * 0.4 + 2 / 6 * 1.0)
    assert 0.7 < res.chosen.thresholds[0] <= 0.9
    pro = res.protection
    assert pro is not None
    assert (pro.classes, pro.named, pro.tail_tolerance) == ((4, 5), False, 0.1)
    assert pro.reference == pytest.approx(1.0)
    # What plain calibration would have chosen: the cheaper point that loses a quarter of the tail.
    assert pro.plain_chosen.flops_ratio == pytest.approx(0.4)
    assert pro.plain_chosen.protected_accuracy == pytest.approx(0.75)
    assert res.final_exit_only.protected_accuracy == pytest.approx(1.0)


def test_a_loose_tail_tolerance_changes_nothing() -> None:
    probs, labels = _problem()
    res = calibrate(
        probs, labels, CUM, tolerance=0.1, train_class_counts=COUNTS, tail_tolerance=0.25
    )
    assert res.protection is not None
    assert res.chosen == res.protection.plain_chosen
    assert res.chosen.flops_ratio == pytest.approx(0.4)


def test_named_classes_are_protected_instead_of_the_tail_third() -> None:
    probs, labels = _problem()
    kw: dict[str, Any] = {"tolerance": 0.1, "train_class_counts": COUNTS, "tail_tolerance": 0.05}
    head = calibrate(probs, labels, CUM, protect_classes=[1, 0], **kw)
    assert head.protection is not None and head.protection.classes == (0, 1)
    assert head.protection.named
    assert head.chosen.flops_ratio == pytest.approx(0.4)  # classes 0 and 1 never suffer
    assert head.chosen.protected_accuracy == pytest.approx(1.0)
    one_tail = calibrate(probs, labels, CUM, protect_classes=[5], **kw)
    assert one_tail.chosen.protected_accuracy == pytest.approx(1.0)
    assert one_tail.chosen.flops_ratio == pytest.approx(4 / 6 * 0.4 + 2 / 6)


def test_coordinate_descent_beyond_three_exits_honours_the_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probs, labels = _problem()
    # Two copies of exit 0's problem in front of the final exit: 3 auxiliary exits, 4 exits.
    useless = _probs((labels + 2) % C, np.full(labels.size, 0.99))  # confident and always wrong
    probs4 = [probs[0], useless, probs[0], probs[1]]
    cum = [0.4, 0.5, 0.6, 1.0]
    kw: dict[str, Any] = {"tolerance": 0.1, "train_class_counts": COUNTS, "tail_tolerance": 0.1}
    greedy = calibrate(probs4, labels, cum, **kw)
    assert greedy.chosen.tail_accuracy == pytest.approx(1.0)
    assert greedy.chosen.flops_ratio == pytest.approx(4 / 6 * 0.4 + 2 / 6)
    monkeypatch.setattr(cal, "EXHAUSTIVE_MAX_EXITS", 4)
    exhaustive = calibrate(probs4, labels, cum, n_quantiles=5, **kw)
    assert exhaustive.chosen.flops_ratio == pytest.approx(greedy.chosen.flops_ratio)


def test_bad_protection_arguments_fail_with_the_reason() -> None:
    probs, labels = _problem()
    with pytest.raises(CalibrationError, match=r"classes \[6\] do not exist"):
        calibrate(probs, labels, CUM, tail_tolerance=0.1, protect_classes=[6])
    with pytest.raises(CalibrationError, match="need a tail tolerance"):
        calibrate(probs, labels, CUM, protect_classes=[4])
    with pytest.raises(CalibrationError, match="needs the tail classes"):
        calibrate(probs, labels, CUM, tail_tolerance=0.1)  # no tail known, none named
    with pytest.raises(ValueError, match="tail_tolerance must be in"):
        calibrate(probs, labels, CUM, tail_tolerance=2.0, train_class_counts=COUNTS)
