"""The exit rule, threshold vectors and softmax: the one definition every part uses."""

from __future__ import annotations

import numpy as np
import pytest

from elf_core.exits import (
    check_thresholds,
    early_exit,
    exit_index,
    exit_thresholds,
    leaves,
    leaves_at,
    softmax,
    softmax_max,
)


def test_softmax_is_stable_float64_and_matches_the_formula() -> None:
    z = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, np.log(2.0)]], dtype=np.float32)
    p = softmax(z)
    assert p.dtype == np.float64
    e = np.exp([[1.0, 2.0, 0.0]])
    np.testing.assert_allclose(p[0], (e / e.sum())[0], rtol=1e-12)
    np.testing.assert_allclose(p[1], [0.25, 0.25, 0.5], rtol=1e-6)


def test_softmax_max_is_the_softmax_and_its_maximum_bit_for_bit() -> None:
    """The batcher decides exits on softmax_max's maxima: they must be probs.max(axis=1) exactly
    (a row at its threshold exits the same way), and the probabilities the same as softmax's."""
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 30.0, 1e4):
        logits = (rng.normal(size=(64, 10)) * scale).astype(np.float32)
        z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)  # the formula, by hand
        e = np.exp(z)
        expected = e / e.sum(axis=1, keepdims=True)
        probs, conf = softmax_max(logits)
        np.testing.assert_array_equal(probs, expected)
        np.testing.assert_array_equal(softmax(logits), expected)
        np.testing.assert_array_equal(conf, expected.max(axis=1))
        t = np.sort(conf)[::8]  # thresholds equal to some rows' maxima
        for v in t:
            np.testing.assert_array_equal(
                leaves_at(conf, v, last=False), leaves(probs, v, last=False)
            )
        assert leaves_at(conf, 2.0, last=True).all()


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.7, 0.8], [0.7, 0.8, 0.0]), ([0.7, 0.8, 0.0], [0.7, 0.8, 0.0]), ([1, 1, 0.5], [1, 1, 0])],
)
def test_exit_thresholds_take_k_minus_1_or_k_and_zero_the_last(
    values: list[float], expected: list[float]
) -> None:
    t = exit_thresholds(values, 3)
    assert t.dtype == np.float64 and t.tolist() == expected


def test_a_single_exit_model_needs_no_threshold() -> None:
    assert exit_thresholds([], 1).tolist() == [0.0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.5], "3 exits: send 2 or 3 thresholds, got 1"),
        ([0.5] * 4, "send 2 or 3 thresholds, got 4"),
        ([], "got none"),
        ([0.5, 1.5], r"must lie in \[0, 1\]"),
        ([-0.1, 0.5], r"must lie in \[0, 1\]"),
        ([0.5, 0.5, 0.5], "its threshold must be 0"),
    ],
)
def test_check_thresholds_refuses_with_the_reason(values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_thresholds(values, 3)


def test_check_thresholds_accepts_both_forms() -> None:
    check_thresholds([0.5, 1.0], 3)
    check_thresholds([0.0, 0.0, 0.0], 3)


def test_leaves_is_reach_or_exceed_and_the_last_exit_takes_everyone() -> None:
    probs = softmax(np.log(np.array([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])))
    assert leaves(probs, np.array([0.6, 0.6, 0.95]), last=False).tolist() == [True, False, False]
    assert leaves(probs, 0.5, last=False).tolist() == [True, True, True]
    assert leaves(probs, np.array([2.0, 2.0, 2.0]), last=True).tolist() == [True] * 3


def test_exit_index_agrees_with_leaves_applied_exit_by_exit() -> None:
    rng = np.random.default_rng(0)
    probs = [softmax(rng.normal(size=(200, 5)) * 3) for _ in range(4)]
    t = exit_thresholds([0.7, 0.6, 0.5], 4)
    idx = exit_index(np.stack([p.max(axis=1) for p in probs]), t)
    # The batcher's way: run exit by exit, drop the rows that leave.
    expected = np.full(200, -1)
    alive = np.arange(200)
    for k, p in enumerate(probs):
        out = leaves(p[alive], t[k], last=k == 3)
        expected[alive[out]] = k
        alive = alive[~out]
    assert alive.size == 0 and idx.tolist() == expected.tolist()
    pred, idx2 = early_exit(probs, [0.7, 0.6, 0.5])
    assert idx2.tolist() == idx.tolist()
    assert pred.tolist() == [int(probs[k][i].argmax()) for i, k in enumerate(idx)]
