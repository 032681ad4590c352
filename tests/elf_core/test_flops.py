"""FLOPs accounting of stages and exit mixes."""

from __future__ import annotations

import numpy as np
import pytest

from elf_core.flops import (
    cumulative_flops,
    cumulative_flops_ratio,
    exit_rates,
    expected_flops,
    full_flops,
)

PER_STAGE = [(100, 10), (200, 20), (300, 30)]  # (body, exit head) per stage


def test_backbone_and_cumulative_costs() -> None:
    assert full_flops(PER_STAGE) == 100 + 200 + 300 + 30
    assert cumulative_flops(PER_STAGE) == [110, 330, 660]
    assert cumulative_flops_ratio(PER_STAGE) == pytest.approx([110 / 630, 330 / 630, 660 / 630])


def test_expected_flops_and_exit_rates_of_an_exit_mix() -> None:
    idx = np.array([0, 0, 1, 2, 2, 2])
    assert expected_flops(idx, cumulative_flops(PER_STAGE)) == pytest.approx(
        (2 * 110 + 330 + 3 * 660) / 6
    )
    assert exit_rates(idx, 3) == pytest.approx([2 / 6, 1 / 6, 3 / 6])
    assert exit_rates(np.array([1, 1]), 3) == [0.0, 1.0, 0.0]
