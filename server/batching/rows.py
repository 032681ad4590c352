"""The rows that travel through the batcher, what they come back as, and the engine protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class StageExecutor(Protocol):
    """What the batcher needs from an engine (OnnxStageRunner, or a fake in tests)."""

    num_stages: int

    def to_device(self, x: np.ndarray) -> Any: ...

    def run(self, k: int, x: Any) -> tuple[Any | None, np.ndarray]: ...

    def merge(self, parts: Sequence[tuple[Any, np.ndarray]]) -> Any: ...


class QueueFullError(RuntimeError):
    pass


class ShuttingDownError(RuntimeError):
    pass


@dataclass(frozen=True)
class RowResult:
    exit_index: int
    probs: np.ndarray  # [C] float64 softmax of the exit taken
    queue_s: float  # waiting in the batcher's queues
    compute_s: float  # the stage (and merge) runs this row took part in


@dataclass(eq=False)
class Row:
    """One image on its way through the stages."""

    x: np.ndarray | None  # [C, H, W], dropped once stage 0 ran
    thresholds: np.ndarray  # [K] float64; inf = never exit here
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[RowResult]
    enqueued_at: float
    queue_s: float = 0.0
    compute_s: float = 0.0
    cancelled: bool = False
    answered: bool = False


@dataclass(eq=False)
class Part:
    handle: Any  # features [b, ...] on the device
    index: np.ndarray  # int64 [m]: the rows of `handle` that continue
    rows: list[Row]  # the m rows, in `index` order
    enqueued_at: float = field(default=0.0)


def resolve(pairs: list[tuple[asyncio.Future[RowResult], RowResult | BaseException]]) -> None:
    for fut, value in pairs:
        if fut.done():  # timed out or cancelled meanwhile
            continue
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)
