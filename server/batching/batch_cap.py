"""The batch size cap (ELF_BATCH_CAP): ELF_MAX_BATCH_SIZE, or chosen at startup from measured
batch efficiency (`auto`).

Why a cap below ELF_MAX_BATCH_SIZE: under a closed loop of c clients and a cap >= c the batcher
runs "rounds" (stage 0 on every client's image, then the survivors stage by stage), so a client
answered at exit 0 waits for the rest of the round before its next image starts, and its p99
latency is about two rounds (bench/results/engine_tail.md). Smaller batches break the rounds,
but they cost throughput where the stage graphs are less efficient per image at small batches
(a small model on a CPU: batch 8 lost 21% on the bundled model), and nothing where they are not
(a resnet50 at 224 px: within a few per cent from batch 8 on). `auto` therefore times the
batcher itself (stage graphs and the engine's per-batch work: on a small model the graphs alone
are nearly flat from batch 8 while the batcher is not) on bursts of synthetic images at a few
batch sizes, and takes the smallest whose time per image is within ELF_BATCH_CAP_TOLERANCE of
the best measured.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from server.batching.batcher import Batcher
from server.batching.rows import StageExecutor
from server.batching.scheduling import Policy

log = logging.getLogger(__name__)

CapRule = Literal["max", "auto"]
# Batch sizes `auto` times (those up to ELF_MAX_BATCH_SIZE, and ELF_MAX_BATCH_SIZE itself).
CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Rounds of passes (every size once per round): at least REPS, and more until the passes add up
# to MIN_SECONDS (a small model's passes last milliseconds); the fastest pass per size counts,
# so the first round also warms the sizes up.
REPS = 2
MIN_SECONDS = 2.0
MAX_ROUNDS = 50

Clock = Callable[[], float]
# Seconds of one timed pass at batch size b (a burst of 2 b rows through the batcher).
Timer = Callable[[int], float]


@dataclass(frozen=True)
class BatchCap:
    """The batcher's cap and how it was chosen (exposed in /v1/models/{name} and a gauge)."""

    size: int
    rule: CapRule = "max"
    tolerance: float | None = None  # auto: accepted excess over the best time per image
    ms_per_image: Mapping[int, float] = field(default_factory=dict)  # auto: measured, by size


def candidate_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes `auto` times: CANDIDATES up to max_batch_size, and max_batch_size."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    return sorted({b for b in CANDIDATES if b <= max_batch_size} | {max_batch_size})


def choose_cap(per_image: Mapping[int, float], tolerance: float) -> int:
    """The smallest batch size whose time per image is within `tolerance` (a fraction) of the
    best; `per_image` maps batch size -> time per image (any unit)."""
    if not per_image:
        raise ValueError("no batch size was timed")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    bad = {b: t for b, t in per_image.items() if b < 1 or not (math.isfinite(t) and t > 0.0)}
    if bad:
        raise ValueError(f"batch sizes >= 1 with positive finite times expected, got {bad}")
    best = min(per_image.values())
    return min(b for b, t in per_image.items() if t <= best * (1.0 + tolerance))


def time_per_image(
    timer: Timer, sizes: Sequence[int], reps: int = REPS, min_seconds: float = MIN_SECONDS
) -> dict[int, float]:
    """Seconds per image by batch size (a pass at size b times 2 b images): the fastest pass.
    Sizes are interleaved within each round, so a slow stretch of the machine does not fall on
    one size only; rounds go on until there were `reps` and the passes took `min_seconds`."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    best = dict.fromkeys(sizes, math.inf)
    spent, rounds = 0.0, 0
    while rounds < reps or (spent < min_seconds and rounds < MAX_ROUNDS):
        for b in sizes:
            t = timer(b)
            spent += t
            best[b] = min(best[b], t / (2 * b))
        rounds += 1
    return best


class BurstTimer:
    """Times the server's own Batcher (cap b, no queue delay) on a burst of 2 b synthetic
    images [2 b, *input_shape] that all run to the last exit: the stage graphs and the engine's
    per-batch work (stacking, merges, softmax, answers), as under load."""

    def __init__(
        self,
        executor: StageExecutor,
        input_shape: Sequence[int],
        policy: Policy,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.executor, self.policy, self.clock = executor, policy, clock
        self.shape = tuple(input_shape)
        k = executor.num_stages
        self.thresholds = np.array([np.inf] * (k - 1) + [0.0])  # [K]: no early exit
        self.rng = np.random.default_rng(0)
        self.loop = asyncio.new_event_loop()

    def __call__(self, b: int) -> float:
        xs = list(self.rng.standard_normal((2 * b, *self.shape), dtype=np.float32))
        batcher = Batcher(
            self.executor,
            max_batch_size=b,
            max_queue_delay_s=0.0,
            max_queue_size=2 * b,
            scheduling=self.policy,
        )
        batcher.start()
        try:
            return self.loop.run_until_complete(self._burst(batcher, xs))
        finally:
            batcher.stop()

    async def _burst(self, batcher: Batcher, xs: list[np.ndarray]) -> float:
        t0 = self.clock()
        await batcher.infer(xs, [self.thresholds] * len(xs), timeout_s=600.0)
        return self.clock() - t0

    def close(self) -> None:
        self.loop.close()


def auto_cap(timer: Timer, max_batch_size: int, tolerance: float, reps: int = REPS) -> BatchCap:
    per_image = time_per_image(timer, candidate_sizes(max_batch_size), reps)
    size = choose_cap(per_image, tolerance)
    ms = {b: 1e3 * t for b, t in per_image.items()}
    return BatchCap(size, "auto", tolerance, ms)


def batch_cap(
    rule: CapRule,
    executor: StageExecutor,
    input_shape: Sequence[int],
    *,
    max_batch_size: int,
    tolerance: float,
    policy: Policy = "age-aware",
    model: str = "model",
) -> BatchCap:
    """ELF_BATCH_CAP for one model: `max` -> max_batch_size; `auto` -> measured now."""
    if rule == "max":
        return BatchCap(max_batch_size)
    if rule != "auto":
        raise ValueError(f"unknown batch cap rule {rule!r} (max | auto)")
    timer = BurstTimer(executor, input_shape, policy)
    try:
        cap = auto_cap(timer, max_batch_size, tolerance)
    finally:
        timer.close()
    log.info(
        "%s: batch cap %d (auto: smallest batch within %g%% of the best ms/image; %s)",
        model,
        cap.size,
        100 * tolerance,
        ", ".join(f"b{b} {t:.3f}" for b, t in cap.ms_per_image.items()),
    )
    return cap
