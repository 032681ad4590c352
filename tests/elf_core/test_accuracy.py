"""Balanced and per-group accuracy on hand-counted labels."""

from __future__ import annotations

import numpy as np
import pytest

from elf_core.accuracy import (
    balanced_accuracy,
    class_groups,
    class_thirds,
    group_accuracy,
    per_class_recall,
    summarize,
)

# Class 0: 4 images (3 right), class 1: 2 images (1 right), class 2: absent, class 3: 1 (right).
LABELS = np.array([0, 0, 0, 0, 1, 1, 3])
PRED = np.array([0, 0, 0, 1, 1, 0, 3])


def test_per_class_recall_marks_absent_classes() -> None:
    r = per_class_recall(PRED == LABELS, LABELS, 4)
    assert r[[0, 1, 3]].tolist() == [0.75, 0.5, 1.0] and np.isnan(r[2])


def test_balanced_accuracy_is_the_mean_over_present_classes() -> None:
    assert balanced_accuracy(PRED, LABELS, 4) == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # Plain top-1 would be 5/7: the majority class does not dominate.
    assert balanced_accuracy(PRED, LABELS, 4) != pytest.approx(5 / 7)


def test_group_accuracy_skips_absent_classes_and_is_none_for_an_empty_group() -> None:
    r = per_class_recall(PRED == LABELS, LABELS, 4)
    assert group_accuracy(r, [1, 2, 3]) == pytest.approx(0.75)
    assert group_accuracy(r, [2]) is None


def test_groups_by_training_frequency() -> None:
    counts = [500, 200, 100, 50, 20, 10]
    assert class_thirds(counts) == ([0, 1], [2, 3], [4, 5])
    groups = class_groups(counts)
    assert groups["many"] == [0, 1] and groups["medium"] == [2, 3, 4] and groups["few"] == [5]
    assert "few" not in class_groups([500, 400, 300])


def test_summarize() -> None:
    s = summarize(PRED, LABELS, {"head": [0], "tail": [2, 3]}, 4)
    assert s["top1"] == pytest.approx(5 / 7)
    assert s["balanced_top1"] == pytest.approx(0.75)
    assert s["per_class"] == [0.75, 0.5, None, 1.0]
    assert s["groups"] == {"head": 0.75, "tail": 1.0}
