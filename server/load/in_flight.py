"""Inference requests in flight, as the app sees them (server/load/admission.py's middleware counts
them in and out): the load controller's end-to-end signal and its admission limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Window:
    """What one reader (a model's controller) has not taken yet."""

    latencies: list[float] = field(default_factory=list)
    refused: int = 0


class RequestMonitor:
    """Inference requests: admitted (in flight), answered (their end-to-end latency), refused by
    the admission limit. The middleware calls `admit`/`done` on the event loop; each model's
    controller thread calls `take` (its own window: every reader sees every request) and
    `set_limit`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}  # token -> arrival time, in arrival order
        self._next = 0
        self._windows: dict[str, _Window] = {}
        self._limits: dict[str, int] = {}  # per controller (model) that sheds load
        self.limit: int | None = None

    def admit(self) -> int | None:
        """A token for `done`, or None: refused (the admission limit is reached)."""
        with self._lock:
            if self.limit is not None and len(self._open) >= self.limit:
                for w in self._windows.values():
                    w.refused += 1
                return None
            token = self._next
            self._next += 1
            self._open[token] = self.clock()
            return token

    def done(self, token: int) -> None:
        with self._lock:
            latency = self.clock() - self._open.pop(token)
            for w in self._windows.values():
                w.latencies.append(latency)

    def take(self, key: str, quantile: float) -> tuple[float | None, int, int, float, int]:
        """(latency quantile or None, answered, refused) since `key`'s last take (the first
        take only starts the window), then (oldest age, in flight) now."""
        with self._lock:
            w = self._windows.get(key, _Window())
            self._windows[key] = _Window()
            oldest = self.clock() - next(iter(self._open.values())) if self._open else 0.0
            in_flight = len(self._open)
        values = w.latencies
        q = float(np.quantile(values, quantile)) if values else None
        return q, len(values), w.refused, oldest, in_flight

    def set_limit(self, key: str, limit: int | None) -> None:
        with self._lock:
            if limit is None:
                self._limits.pop(key, None)
            else:
                self._limits[key] = limit
            self.limit = min(self._limits.values()) if self._limits else None
