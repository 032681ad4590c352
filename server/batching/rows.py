"""The rows that travel through the batcher, what they come back as, and the engine protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
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


class NeverFitsError(ValueError):
    """More rows in one request than the queue can ever hold: retrying cannot help (413)."""


class ShuttingDownError(RuntimeError):
    pass


@dataclass(frozen=True)
class RowResult:
    exit_index: int
    probs: np.ndarray  # [C] float64 softmax of the exit taken
    queue_s: float  # waiting in the batcher's queues
    compute_s: float  # the stage (and merge) runs this row took part in


@dataclass(eq=False)
class Request:
    """One `Batcher.infer` call: its rows' answers collect here (worker thread only), and its one
    future resolves on its event loop with all of them, or with the first error. One future and
    one wake-up per request, not per image."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[RowResult]]
    results: list[RowResult | None]  # by row, in the order of the request's images
    remaining: int  # rows not answered yet
    cancelled: bool = False  # timed out or the client went away: its rows are dropped

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop, n: int) -> Request:
        return cls(loop, loop.create_future(), [None] * n, n)

    def answer(self, slot: int, value: RowResult | BaseException) -> bool:
        """Record one row's answer; True when the request is complete (or failed) just now."""
        if self.remaining <= 0:
            return False  # already failed: the other rows' answers have nobody waiting
        if isinstance(value, BaseException):
            self.remaining = 0
            return True
        self.results[slot] = value
        self.remaining -= 1
        return self.remaining == 0


@dataclass(eq=False)
class Row:
    """One image on its way through the stages."""

    x: np.ndarray | None  # [C, H, W]; stage 0 reads it (the row then lives on in a Part)
    thresholds: np.ndarray  # [K] float64; inf = never exit here
    request: Request
    slot: int  # this row's place in request.results
    enqueued_at: float  # when the request reached the batcher
    answered: bool = False

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled

    @property
    def arrived_at(self) -> float:
        return self.enqueued_at


@dataclass(eq=False)
class Part:
    """Rows that continue past a stage, with their bookkeeping as arrays (no per-row objects
    are touched on the way through the stages): m rows, in `index` order."""

    handle: Any  # features [b, ...] on the device
    index: np.ndarray  # int64 [m]: the rows of `handle` that continue
    rows: list[Row]  # the m rows (their futures; cancellation)
    thresholds: np.ndarray  # float64 [m, K]
    arrived: np.ndarray  # float64 [m]: when each row's request reached the batcher
    queue_s: np.ndarray  # float64 [m]: waited in queues so far
    compute_s: np.ndarray  # float64 [m]: stage runs taken part in so far
    enqueued_at: float = 0.0  # when the part entered its queue

    @property
    def arrived_at(self) -> float:
        return float(self.arrived.min()) if self.arrived.size else self.enqueued_at

    @classmethod
    def first(cls, handle: Any, rows: list[Row], now: float) -> Part:
        """Stage 0's batch: `handle` holds the rows' images in order; they waited since arrival."""
        n = len(rows)
        arrived = np.fromiter((r.enqueued_at for r in rows), np.float64, n)
        thresholds = np.stack([r.thresholds for r in rows])
        return cls(handle, np.arange(n), rows, thresholds, arrived, now - arrived, np.zeros(n))

    @classmethod
    def join(cls, handle: Any, parts: Sequence[Part], now: float) -> Part:
        """Stage k's batch: `handle` is the parts' rows merged in order; each waited since its
        part entered the queue."""
        return cls(
            handle,
            np.arange(sum(p.index.size for p in parts)),
            [r for p in parts for r in p.rows],
            np.concatenate([p.thresholds for p in parts]),
            np.concatenate([p.arrived for p in parts]),
            np.concatenate([p.queue_s + (now - p.enqueued_at) for p in parts]),
            np.concatenate([p.compute_s for p in parts]),
        )

    def split(self, n: int) -> Part:
        """Remove the first n rows from self and return them as a part of their own."""
        head = Part(
            self.handle,
            self.index[:n],
            self.rows[:n],
            self.thresholds[:n],
            self.arrived[:n],
            self.queue_s[:n],
            self.compute_s[:n],
            self.enqueued_at,
        )
        self.index, self.rows = self.index[n:], self.rows[n:]
        self.thresholds, self.arrived = self.thresholds[n:], self.arrived[n:]
        self.queue_s, self.compute_s = self.queue_s[n:], self.compute_s[n:]
        return head

    def select(self, keep: np.ndarray | list[int]) -> Part:
        """The rows at positions `keep` (same handle)."""
        return Part(
            self.handle,
            self.index[keep],
            [self.rows[i] for i in keep],
            self.thresholds[keep],
            self.arrived[keep],
            self.queue_s[keep],
            self.compute_s[keep],
            self.enqueued_at,
        )


def resolve(requests: list[tuple[Request, BaseException | None]]) -> None:
    """On the requests' event loop: complete each future with its results, or its error."""
    for req, error in requests:
        if req.future.done():  # timed out or cancelled meanwhile
            continue
        if error is not None:
            req.future.set_exception(error)
        else:
            req.future.set_result(req.results)  # type: ignore[arg-type]  # all set by now
