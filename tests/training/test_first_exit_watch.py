"""Training warns when most images count as exited at the first exit for several epochs."""

from __future__ import annotations

import logging

import pytest

from training.loop import FirstExitWatch


def test_warns_once_after_three_epochs_above_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    watch = FirstExitWatch(bound=0.7, epochs=3)
    rates = [[0.8, 0.1, 0.1], [0.9, 0.1, 0.0], [0.5, 0.2, 0.3], [0.75, 0.2, 0.05]]
    rates += [[0.84, 0.1, 0.06], [0.79, 0.2, 0.01], [0.9, 0.05, 0.05]]
    with caplog.at_level(logging.WARNING, logger="training.loop"):
        fired = [watch.update(epoch, r) for epoch, r in enumerate(rates, start=1)]
    # A dip below the bound (epoch 3) restarts the count; epochs 4-6 reach three in a row.
    assert fired == [False, False, False, False, False, True, False]
    (record,) = caplog.records
    assert "epoch 6: 79% of training images counted as exited at exit 0" in record.message
    assert "above 70% for 3 epochs" in record.message


def test_one_exit_is_never_watched() -> None:
    watch = FirstExitWatch(bound=0.0, epochs=1)
    assert not watch.update(1, [1.0])
