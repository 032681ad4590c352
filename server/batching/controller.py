"""Load-adaptive operating point: cheaper default thresholds while the queue is over its target.

The calibration curve (calibration.json: validation balanced top-1 and FLOPs ratio per threshold
set) is the menu. From the base point (the thresholds in force: calibrated, or set by PUT /
ELF_STATE_DIR) it holds the Pareto points that are cheaper, at least `min_step` apart in FLOPs
ratio, down to the floor (ELF_MIN_ACCURACY; default the base point's accuracy minus 0.01).

Every `tick_s` the controller reads the queue delay of the rows answered since the last tick
(its `quantile`, 0.9) and the queue depth. Hysteresis: over the target (or a depth whose wait at
the measured rate would exceed it) it moves one point cheaper; under `low` x target for
`calm_ticks` ticks in a row it moves one point back. Bounded rate: at most one move per
`min_interval_s`. Only the defaults move: a request's own `threshold` or `exit=final` is never
touched. Each worker process runs its own controller on its own queue; the base is shared
through the state directory, the moves are not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    thresholds: tuple[float, ...]  # [K], the last 0
    accuracy: float  # validation balanced top-1, 0..1
    flops_ratio: float  # validation executed / full backbone


@dataclass(frozen=True)
class ControllerConfig:
    target_s: float  # ELF_LATENCY_TARGET_MS / 1000
    min_accuracy: float | None = None  # None: base accuracy - 0.01
    tick_s: float = 0.25
    min_interval_s: float = 1.0  # at most one move per interval
    low: float = 0.5  # "load fell": delay under low * target ...
    calm_ticks: int = 8  # ... for this many ticks in a row
    quantile: float = 0.9
    min_step: float = 0.01  # FLOPs ratio between neighbouring menu points


def curve_points(curve: Any, key: str = "pareto") -> list[Point]:
    """calibration.json's `pareto` (the menu) or `curve` (every point measured) as Points."""
    if not isinstance(curve, dict):
        return []
    raw = curve.get(key) or []
    return [
        Point(tuple(float(t) for t in p["thresholds"]), p["balanced_accuracy"], p["flops_ratio"])
        for p in raw
    ]


def build_menu(
    points: Sequence[Point],
    base: tuple[float, ...],
    floor: float | None,
    min_step: float,
    measured: Sequence[Point] = (),
) -> list[Point]:
    """[base point, cheaper Pareto points ...] down to the floor; [] when neither `points` nor
    `measured` (the whole curve) holds the base thresholds."""
    found = [p for p in (*points, *measured) if np.allclose(p.thresholds, base, atol=1e-9)]
    if not found:
        return []
    start = found[0]
    least = floor if floor is not None else start.accuracy - 0.01
    menu = [start]
    for p in sorted(points, key=lambda q: -q.flops_ratio):
        if p.accuracy < least or p.flops_ratio > menu[-1].flops_ratio - min_step:
            continue
        # Pareto: a cheaper point must not be more accurate than a dearer one already chosen.
        if p.accuracy <= menu[-1].accuracy:
            menu.append(p)
    return menu


@dataclass
class Controller:
    """The decision rule; `step` is pure given its inputs (tests drive it with their own clock)."""

    config: ControllerConfig
    points: list[Point]
    apply: Callable[[Point, str, str], None]  # (point, direction, reason)
    measured: list[Point] = field(default_factory=list)  # the whole curve: base look-up
    menu: list[Point] = field(default_factory=list)
    index: int = 0
    _last_move: float = float("-inf")
    _calm: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rebase(self, base: tuple[float, ...]) -> None:
        """New base thresholds (PUT, state directory): start again from them."""
        c = self.config
        self.menu = build_menu(self.points, base, c.min_accuracy, c.min_step, self.measured)
        self.index, self._calm = 0, 0
        if not self.menu:
            log.warning("controller: thresholds %s are not on the calibration curve; idle", base)

    @property
    def current(self) -> Point | None:
        return self.menu[self.index] if self.menu else None

    @property
    def at_floor(self) -> bool:
        return len(self.menu) > 1 and self.index == len(self.menu) - 1

    def step(self, now: float, delay_s: float | None, depth: int, rate: float) -> str | None:
        """One tick: delay_s = queue-delay quantile since the last tick (None: no answers),
        depth = images waiting, rate = images answered per second. Returns the move made."""
        target = self.config.target_s
        backlog_s = depth / rate if rate > 0 else (float("inf") if depth else 0.0)
        over = (delay_s is not None and delay_s > target) or backlog_s > target
        calm = not over and (delay_s or 0.0) < self.config.low * target
        self._calm = self._calm + 1 if calm else 0
        if len(self.menu) < 2 or now - self._last_move < self.config.min_interval_s:
            return None
        if over and self.index < len(self.menu) - 1:
            self.index += 1
            reason = f"queue delay {_ms(delay_s)} / backlog {_ms(backlog_s)} > target {_ms(target)}"
            return self._move(now, "cheaper", reason)
        if self._calm >= self.config.calm_ticks and self.index > 0:
            self.index -= 1
            self._calm = 0
            reason = f"queue delay {_ms(delay_s)} < {self.config.low:g} x target {_ms(target)}"
            return self._move(now, "back", reason)
        return None

    def _move(self, now: float, direction: str, reason: str) -> str:
        self._last_move = now
        self.apply(self.menu[self.index], direction, reason)
        return direction


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


class DelayWindow:
    """Queue delays of answered rows since the last `take` (written by the batcher's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: list[float] = []

    def observe(self, queue_s: float) -> None:
        with self._lock:
            self._values.append(queue_s)

    def take(self, quantile: float) -> tuple[float | None, int]:
        """(quantile of the delays or None, how many) and start a new window."""
        with self._lock:
            values, self._values = self._values, []
        return (float(np.quantile(values, quantile)) if values else None), len(values)


class ControllerThread:
    """Runs `controller.step` every tick on measured values, until stopped."""

    def __init__(
        self,
        controller: Controller,
        window: DelayWindow,
        depth: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller, self.window, self.depth, self.clock = controller, window, depth, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elf-controller", daemon=True)
        self._last = clock()

    def start(self) -> None:
        self._thread.start()

    def tick(self) -> str | None:
        now = self.clock()
        delay, n = self.window.take(self.controller.config.quantile)
        rate = n / max(now - self._last, 1e-6)
        self._last = now
        with self.controller.lock:
            return self.controller.step(now, delay, self.depth(), rate)

    def _run(self) -> None:
        while not self._stop.wait(self.controller.config.tick_s):
            try:
                self.tick()
            except Exception:  # the controller must never take the server down
                log.exception("controller tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
