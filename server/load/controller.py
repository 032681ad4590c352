"""Load-adaptive operating point: cheaper default thresholds while the service is behind its
latency target, and load shedding once the cheapest acceptable point is not enough.

The calibration curve (calibration.json: validation balanced top-1 and FLOPs ratio per threshold
set) is the menu. From the base point (the thresholds in force: calibrated, or set by PUT /
ELF_STATE_DIR) it holds the Pareto points that are cheaper, at least `min_step` apart in FLOPs
ratio, down to the floor (ELF_MIN_ACCURACY; default the base point's accuracy minus 0.01).

Every `tick_s` the controller reads one load figure, in seconds: the largest of
  - the end-to-end latency (arrival at the app to its answer, RequestMonitor, fed by
    server/load/admission.py's middleware) of the requests answered since the last tick, its
    `quantile`;
  - the age of the oldest request admitted and not yet answered (a backlog shows here at once,
    before anything is answered, wherever it waits: decoding, the event loop, the batcher);
  - the batcher's queue delay (its `quantile`) of the rows answered since the last tick.
One rule with hysteresis: over the target it moves one point cheaper; under `low` x target for
`calm_ticks` ticks in a row it moves one point back, if the dearer point would keep the batcher
under `max_busy` of its time (its busy fraction, smoothed, scaled by the two points' FLOPs
ratios), so that it does not step back into an overload only the cheaper point carries. Bounded
rate: at most one move per
`min_interval_s`. Only the defaults move: a request's own `threshold` or `exit=final` is never
touched.

At the cheapest point (the floor) and still over the target, cheaper answers cannot help any
more: the controller sheds load. It sets an admission limit on the inference requests in flight:
what the measured throughput answers within `low` x target (Little's law: requests answered per
second, smoothed over ticks, x low x target), recomputed every tick, so that it follows the
capacity and grows again when it was too tight (as long as one request alone takes less than
that). New requests beyond it get 503 with Retry-After at once (counted, reason "overloaded")
instead of a latency that grows into timeouts. The limit is lifted after `calm_ticks` ticks
under the target without a refusal; only then may the point move back.
Each worker process runs its own controller on its own requests and queue; the base is shared
through the state directory, the moves and the limit are not. With several models the request
figures are the service's (the HTTP side is shared); the admission limit is the lowest any
model's controller sets.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.load.in_flight import RequestMonitor

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
    min_interval_s: float = 0.25  # at most one move per interval (back: also calm_ticks)
    low: float = 0.5  # "load fell": delay under low * target ...
    calm_ticks: int = 8  # ... for this many ticks in a row
    quantile: float = 0.9
    min_step: float = 0.01  # FLOPs ratio between neighbouring menu points
    smoothing: float = 0.25  # weight of the newest tick in the smoothed throughput and busy
    max_busy: float = 0.8  # back only if the busy fraction x FLOPs growth stays under this
    min_limit: int = 1  # the admission limit never goes below this many requests in flight


@dataclass(frozen=True)
class Signal:
    """One tick's measurements; None: nothing answered during the tick."""

    latency_s: float | None = None  # requests answered: arrival at the app to answer, quantile
    oldest_s: float = 0.0  # age of the oldest request admitted and not yet answered
    queue_delay_s: float | None = None  # batcher: queue delay of the rows answered, quantile
    answered_per_s: float = 0.0  # requests answered per second (refused ones not counted)
    refused: int = 0  # requests refused by the admission limit during the tick
    busy: float = 0.0  # fraction of the tick the batcher spent running batches (0..1)

    @property
    def load_s(self) -> float:
        return max(self.latency_s or 0.0, self.oldest_s, self.queue_delay_s or 0.0)

    def describe(self) -> str:
        return (
            f"latency {_ms(self.latency_s)}, oldest in flight {_ms(self.oldest_s)}, "
            f"queue delay {_ms(self.queue_delay_s)}"
        )


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
    """[base point, cheaper Pareto points ...] down to the floor (the cheapest last); [] when
    neither `points` nor `measured` (the whole curve) holds the base thresholds."""
    found = [p for p in (*points, *measured) if np.allclose(p.thresholds, base, atol=1e-9)]
    if not found:
        return []
    start = found[0]
    least = floor if floor is not None else start.accuracy - 0.01
    menu = [start]
    for p in sorted(points, key=lambda q: -q.flops_ratio):
        if p.accuracy < least or p.flops_ratio > menu[-1].flops_ratio - min_step:
            continue
        # Pareto: a cheaper point must not be more accurate than a dearer one already chosen;
        # but the base may lie below the front (cheaper points more accurate): moving to those
        # is better still.
        if len(menu) == 1 or p.accuracy <= menu[-1].accuracy:
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
    limit: int | None = None  # admission limit (requests in flight) while shedding; None: off
    _last_move: float = float("-inf")
    _calm: int = 0
    _quiet: int = 0  # ticks in a row under the target without a refusal
    _rate: float = 0.0  # requests answered per second, smoothed, while shedding
    _busy: float = 0.0  # the batcher's busy fraction, smoothed
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rebase(self, base: tuple[float, ...]) -> None:
        """New base thresholds (PUT, state directory): start again from them."""
        c = self.config
        self.menu = build_menu(self.points, base, c.min_accuracy, c.min_step, self.measured)
        self.index, self._calm, self.limit = 0, 0, None
        if not self.menu:
            log.warning("controller: thresholds %s are not on the calibration curve; idle", base)

    @property
    def current(self) -> Point | None:
        return self.menu[self.index] if self.menu else None

    @property
    def at_floor(self) -> bool:
        return len(self.menu) > 1 and self.index == len(self.menu) - 1

    def step(self, now: float, signal: Signal) -> str | None:
        """One tick on `signal`; returns the move made ("cheaper", "back") or None. The
        admission limit (`limit`) is updated on every tick, moves at a bounded rate."""
        c = self.config
        load = signal.load_s
        over = load > c.target_s
        self._calm = self._calm + 1 if load < c.low * c.target_s else 0
        self._quiet = self._quiet + 1 if not over and signal.refused == 0 else 0
        self._busy += c.smoothing * (signal.busy - self._busy)
        self._admission(signal, over)
        if len(self.menu) < 2 or now - self._last_move < c.min_interval_s:
            return None
        if over and self.index < len(self.menu) - 1:
            self.index += 1
            reason = f"{signal.describe()} > target {_ms(c.target_s)}"
            return self._move(now, "cheaper", reason)
        if self._calm >= c.calm_ticks and self.index > 0 and self.limit is None and self._fits():
            self.index -= 1
            self._calm = 0
            reason = f"{signal.describe()} < {c.low:g} x target {_ms(c.target_s)}"
            return self._move(now, "back", reason)
        return None

    def _fits(self) -> bool:
        """Would the dearer point keep the batcher under max_busy at today's load? Its compute
        grows with the FLOPs ratio; without this, a back move under a load only the cheaper
        point can carry brings the overload back (and the controller oscillates)."""
        here, dearer = self.menu[self.index], self.menu[self.index - 1]
        grow = dearer.flops_ratio / max(here.flops_ratio, 1e-9)
        return self._busy * grow <= self.config.max_busy

    def _admission(self, signal: Signal, over: bool) -> None:
        """Shed load only at the cheapest point: admit what the throughput answers within
        low x target."""
        c = self.config
        if not self.menu or self.index < len(self.menu) - 1:
            self.limit = None
            return
        if self.limit is None:
            if not over:
                return
            self._rate, self._quiet = signal.answered_per_s, 0
            log.warning(
                "controller: at the cheapest point and %s > target %s: shedding load",
                signal.describe(), _ms(c.target_s),
            )  # fmt: skip
        elif self._quiet >= c.calm_ticks:
            self.limit = None
            log.info("controller: load shedding off (%s)", signal.describe())
            return
        else:
            self._rate += c.smoothing * (signal.answered_per_s - self._rate)
        self.limit = max(c.min_limit, math.ceil(self._rate * c.low * c.target_s))

    def _move(self, now: float, direction: str, reason: str) -> str:
        self._last_move = now
        self.apply(self.menu[self.index], direction, reason)
        return direction


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


class DelayWindow:
    """Queue delays of answered rows and seconds spent running batches since the last `take`
    (written by the batcher's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: list[float] = []
        self._busy = 0.0

    def observe(self, queue_s: float) -> None:
        with self._lock:
            self._values.append(queue_s)

    def busy(self, seconds: float) -> None:
        with self._lock:
            self._busy += seconds

    def take(self, quantile: float) -> tuple[float | None, int, float]:
        """(quantile of the delays or None, how many, busy seconds); starts a new window."""
        with self._lock:
            values, self._values = self._values, []
            busy, self._busy = self._busy, 0.0
        q = float(np.quantile(values, quantile)) if values else None
        return q, len(values), busy


class ControllerThread:
    """Runs `controller.step` every tick on measured values, until stopped."""

    def __init__(
        self,
        controller: Controller,
        window: DelayWindow,
        requests: RequestMonitor,
        *,
        key: str = "model",
        clock: Callable[[], float] = time.monotonic,
        on_tick: Callable[[int], None] = lambda in_flight: None,
    ) -> None:
        self.controller, self.window, self.requests = controller, window, requests
        self.key, self.clock, self.on_tick = key, clock, on_tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elf-controller", daemon=True)
        self._last = clock()
        requests.take(key, 0.5)  # opens this controller's window

    def start(self) -> None:
        self._thread.start()

    def tick(self) -> str | None:
        now = self.clock()
        q = self.controller.config.quantile
        delay, _, busy_s = self.window.take(q)
        latency, answered, refused, oldest, in_flight = self.requests.take(self.key, q)
        elapsed = max(now - self._last, 1e-6)
        self._last = now
        signal = Signal(latency, oldest, delay, answered / elapsed, refused, busy_s / elapsed)
        with self.controller.lock:
            move = self.controller.step(now, signal)
            self.requests.set_limit(self.key, self.controller.limit)
        self.on_tick(in_flight)
        return move

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
        self.requests.set_limit(self.key, None)
