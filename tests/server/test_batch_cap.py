"""ELF_BATCH_CAP: the batch cap chosen from measured batch efficiency (batching/batch_cap.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.batching.batch_cap import (
    BurstTimer,
    auto_cap,
    batch_cap,
    candidate_sizes,
    choose_cap,
    time_per_image,
)
from tests.server.conftest import make_settings


def test_candidates_stop_at_the_max_and_include_it() -> None:
    assert candidate_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert candidate_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert candidate_sizes(1) == [1]
    with pytest.raises(ValueError, match="max_batch_size"):
        candidate_sizes(0)


def test_the_smallest_batch_within_the_tolerance_of_the_best_wins() -> None:
    per_image = {1: 5.0, 4: 1.30, 8: 1.04, 16: 1.01, 32: 1.0}
    assert choose_cap(per_image, 0.05) == 8
    assert choose_cap(per_image, 0.03) == 16
    assert choose_cap(per_image, 0.0) == 32
    assert choose_cap(per_image, 0.5) == 4
    # The best need not be the largest batch: beyond it the smallest within reach still wins.
    assert choose_cap({1: 3.0, 8: 1.0, 32: 1.2}, 0.05) == 8


@pytest.mark.parametrize(
    ("per_image", "tolerance", "match"),
    [
        ({}, 0.05, "no batch size"),
        ({8: 1.0}, 1.0, "tolerance"),
        ({8: 1.0}, -0.1, "tolerance"),
        ({8: 0.0, 16: 1.0}, 0.05, "positive finite"),
        ({8: float("nan")}, 0.05, "positive finite"),
        ({0: 1.0}, 0.05, "positive finite"),
    ],
)
def test_bad_timings_are_refused(per_image: dict[int, float], tolerance: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        choose_cap(per_image, tolerance)


class ScriptedTimer:
    """Seconds per pass of 2 b images: 2 (overhead + per_row * b); the passes listed in `slow`
    (by call number) take 100x longer."""

    def __init__(self, overhead: float, per_row: float, slow: frozenset[int] = frozenset()) -> None:
        self.overhead, self.per_row, self.slow = overhead, per_row, slow
        self.calls: list[int] = []

    def __call__(self, b: int) -> float:
        self.calls.append(b)
        t = 2 * (self.overhead + self.per_row * b)
        return 100 * t if len(self.calls) - 1 in self.slow else t


def test_timing_interleaves_sizes_and_keeps_the_fastest_pass_per_image() -> None:
    timer = ScriptedTimer(1.0, 0.5, slow=frozenset({0, 4}))  # 0: 1st b1, 4: 2nd b2
    got = time_per_image(timer, [1, 2, 4], reps=2, min_seconds=0.0)
    assert timer.calls == [1, 2, 4, 1, 2, 4]
    assert got == {1: 1.5, 2: 1.0, 4: 0.75}
    with pytest.raises(ValueError, match="reps"):
        time_per_image(timer, [1], reps=0)


def test_short_passes_repeat_until_the_minimum_time_is_spent() -> None:
    timer = ScriptedTimer(0.0, 0.01)  # a round of sizes 1 and 4 takes 0.1 s
    time_per_image(timer, [1, 4], reps=2, min_seconds=0.55)
    assert len(timer.calls) == 2 * 6  # 6 rounds: 0.5 s after 5, 0.6 after 6


def test_auto_cap_follows_the_batch_efficiency_of_the_engine() -> None:
    # Overhead-bound (a small model on a CPU): per image 1/b + 0.1; only 32 is within 5%.
    small = auto_cap(ScriptedTimer(1.0, 0.1), 32, 0.05)
    assert small.size == 32 and small.rule == "auto" and small.tolerance == 0.05
    # Compute-bound (a large model): per image 0.1/b + 0.1; 16 is within 5% of 32's 0.103.
    large = auto_cap(ScriptedTimer(0.1, 0.1), 32, 0.05)
    assert large.size == 16
    assert set(large.ms_per_image) == set(candidate_sizes(32))
    assert large.ms_per_image[16] == pytest.approx(1e3 * (0.1 / 16 + 0.1))


class ClockedStages:
    """A stage executor on a manual clock: stage k of a batch of b costs (k + 1) * b ticks.
    Runs on the batcher's worker thread; the test reads the clock after the burst's answers."""

    num_stages = 3

    def __init__(self) -> None:
        self.now = 0.0
        self.shapes: list[tuple[int, ...]] = []
        self.runs: list[tuple[int, int]] = []  # (stage, rows) per run

    def clock(self) -> float:
        return self.now

    def to_device(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        return x

    def run(self, k: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        self.now += (k + 1) * len(x)
        self.runs.append((k, len(x)))
        return (x if k < self.num_stages - 1 else None), np.zeros((len(x), 2), np.float32)

    def merge(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return np.concatenate([h[rows] for h, rows in parts])


def test_the_burst_timer_runs_the_batcher_to_the_last_exit_on_synthetic_input() -> None:
    stages = ClockedStages()
    timer = BurstTimer(stages, (1, 28, 28), "age-aware", stages.clock)
    try:
        # 2 b rows in batches of b: per stage 2 batches of b rows, stage k costs (k + 1) ticks
        # per row: 2 b (1 + 2 + 3) ticks in all.
        assert timer(4) == 48.0 and timer(1) == 12.0
    finally:
        timer.close()
    # Nothing exits early (thresholds inf), every stage runs full batches.
    assert sorted(stages.runs) == sorted([(k, b) for b in (4, 1) for k in range(3) for _ in "ab"])
    assert stages.shapes == [(4, 1, 28, 28)] * 2 + [(1, 1, 28, 28)] * 2


def test_the_max_rule_measures_nothing() -> None:
    stages = ClockedStages()
    cap = batch_cap("max", stages, (1, 2, 2), max_batch_size=12, tolerance=0.05)
    assert (cap.size, cap.rule, cap.ms_per_image) == (12, "max", {})
    assert stages.shapes == []
    with pytest.raises(ValueError, match="unknown batch cap rule"):
        batch_cap("fixed", stages, (1, 2, 2), max_batch_size=12, tolerance=0.05)  # type: ignore[arg-type]


@pytest.fixture
def auto_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(tiny_model_dir, batch_cap="auto", batch_cap_tolerance=0.05)
    with TestClient(create_app(settings)) as c:
        yield c


def test_auto_on_a_real_onnx_model_sets_the_batcher_gauge_and_model_info(
    auto_client: TestClient,
) -> None:
    model = auto_client.app.state.elf.models.get()  # type: ignore[attr-defined]
    cap = model.batch_cap
    assert cap.rule == "auto" and model.batcher.max_batch_size == cap.size
    assert set(cap.ms_per_image) == set(candidate_sizes(8))
    assert cap.size == choose_cap(cap.ms_per_image, 0.05)
    assert all(t > 0 for t in cap.ms_per_image.values())
    d = auto_client.get(f"/v1/models/{model.name}").json()
    assert d["batch_cap"]["size"] == cap.size and d["batch_cap"]["rule"] == "auto"
    assert d["batch_cap"]["ms_per_image"] == {str(b): t for b, t in cap.ms_per_image.items()}
    metrics = auto_client.get("/metrics").text
    assert f'elf_batch_cap{{model="{model.name}"}} {float(cap.size)}' in metrics
