"""The learning-rate schedule: warm-up, cosine, step."""

from __future__ import annotations

import itertools
import math

import pytest

from training.config import OptimConfig
from training.optim import lr_factor


def test_warmup_then_cosine() -> None:
    opt = OptimConfig(warmup_epochs=2, schedule="cosine")
    f = [lr_factor(s, 10, 10, opt) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and f[19] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(f[:20]))
    # cosine over the 80 steps after warm-up: halfway is 0.5
    assert f[20] == pytest.approx(1.0) and f[60] == pytest.approx(0.5)
    assert f[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)))


def test_step_schedule_and_short_runs() -> None:
    opt = OptimConfig(warmup_epochs=0, schedule="step", milestones=(3, 6), gamma=0.1)
    assert [lr_factor(e * 5, 5, 8, opt) for e in range(8)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]
    )
    # default milestones at 60% and 80% of the epochs
    assert lr_factor(6 * 5, 5, 10, OptimConfig(warmup_epochs=0, schedule="step")) == 0.1
    # a one-epoch run is not all warm-up: the cosine anneals within it
    one = OptimConfig(warmup_epochs=5)
    assert lr_factor(0, 10, 1, one) == 1.0 and lr_factor(9, 10, 1, one) < 0.1
