"""The batch size cap (ELF_BATCH_CAP): ELF_MAX_BATCH_SIZE, or chosen at startup from measured
batch efficiency (`auto`).

Why a cap below ELF_MAX_BATCH_SIZE: under a closed loop of c clients and a cap >= c the batcher
runs "rounds" (stage 0 on every client's image, then the survivors stage by stage), so a client
answered at exit 0 waits for the rest of the round before its next image starts, and its p99
latency is about two rounds (bench/results/engine_tail.md). Smaller batches break the rounds,
but they cost throughput where the stage graphs are less efficient per image at small batches
(a small model on a CPU: batch 8 lost 21% on the bundled model), and nothing where they are not
(a resnet50 at 224 px: within a few per cent from batch 8 on). `auto` therefore times the stage
chain on synthetic input at a few batch sizes and takes the smallest whose time per image is
within ELF_BATCH_CAP_TOLERANCE of the best measured.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from server.batching.rows import StageExecutor

log = logging.getLogger(__name__)

CapRule = Literal["max", "auto"]
# Batch sizes `auto` times (those up to ELF_MAX_BATCH_SIZE, and ELF_MAX_BATCH_SIZE itself).
CANDIDATES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
REPS = 3  # timed passes per batch size (after one untimed pass); the fastest counts

Clock = Callable[[], float]
# Seconds of one pass of a batch of `b` rows through every stage.
ChainTimer = Callable[[int], float]


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


def time_per_image(timer: ChainTimer, sizes: Sequence[int], reps: int = REPS) -> dict[int, float]:
    """Seconds per image by batch size: the fastest of `reps` timed passes, after one untimed
    pass per size; sizes are interleaved within each repetition, so a slow stretch of the
    machine does not fall on one size only."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for b in sizes:
        timer(b)
    best = dict.fromkeys(sizes, math.inf)
    for _ in range(reps):
        for b in sizes:
            best[b] = min(best[b], timer(b) / b)
    return best


def chain_timer(
    executor: StageExecutor, input_shape: Sequence[int], clock: Clock = time.perf_counter
) -> ChainTimer:
    """Time one batch of b synthetic images [b, *input_shape] through every stage (no exits:
    every row continues), from host input to the last stage's logits."""
    rng = np.random.default_rng(0)

    def timer(b: int) -> float:
        x = rng.standard_normal((b, *input_shape), dtype=np.float32)
        t0 = clock()
        h = executor.to_device(x)
        for k in range(executor.num_stages):
            h, _ = executor.run(k, h)
        return clock() - t0

    return timer


def auto_cap(
    timer: ChainTimer, max_batch_size: int, tolerance: float, reps: int = REPS
) -> BatchCap:
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
    model: str = "model",
) -> BatchCap:
    """ELF_BATCH_CAP for one model: `max` -> max_batch_size; `auto` -> measured now."""
    if rule == "max":
        return BatchCap(max_batch_size)
    if rule != "auto":
        raise ValueError(f"unknown batch cap rule {rule!r} (max | auto)")
    cap = auto_cap(chain_timer(executor, input_shape), max_batch_size, tolerance)
    log.info(
        "%s: batch cap %d (auto: smallest batch within %g%% of the best ms/image; %s)",
        model,
        cap.size,
        100 * tolerance,
        ", ".join(f"b{b} {t:.3f}" for b, t in cap.ms_per_image.items()),
    )
    return cap
