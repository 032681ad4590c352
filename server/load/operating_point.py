"""Wiring of the load-adaptive operating point (server/load/controller.py) to a served model."""

from __future__ import annotations

import logging

from server.load.controller import (
    Controller,
    ControllerConfig,
    ControllerThread,
    DelayWindow,
    Point,
    RequestMonitor,
    curve_points,
)
from server.metrics import Metrics
from server.registry import ServedModel
from server.settings import Settings

log = logging.getLogger(__name__)


def start_controller(
    model: ServedModel, settings: Settings, metrics: Metrics, requests: RequestMonitor | None
) -> None:
    """With ELF_LATENCY_TARGET_MS set: a controller thread moving `model`'s default thresholds
    and, at the floor, setting the admission limit of `requests` (server/load/admission.py)."""
    if settings.latency_target_ms is None or requests is None:
        return
    config = ControllerConfig(
        target_s=settings.latency_target_ms / 1000.0, min_accuracy=settings.min_accuracy
    )

    def apply(point: Point, direction: str, reason: str) -> None:
        previous = model.set_thresholds(list(point.thresholds))
        metrics.set_thresholds(model.name, model.thresholds)
        metrics.child(metrics.point_moves, model.name, direction).inc()
        publish(model, metrics)
        log.info(
            "%s: operating point %s (%s): thresholds %s -> %s, val accuracy %.4f, FLOPs %.3f",
            model.name, direction, reason, list(previous), list(point.thresholds),
            point.accuracy, point.flops_ratio,
        )  # fmt: skip

    controller = Controller(
        config,
        curve_points(model.curve, "pareto"),
        apply,
        measured=curve_points(model.curve, "curve"),
    )
    for direction in ("cheaper", "back"):
        metrics.child(metrics.point_moves, model.name, direction)
    window = DelayWindow()
    model.batcher.delays = window

    def on_tick(in_flight: int) -> None:
        metrics.requests_in_flight.set(in_flight)
        limit = controller.limit
        metrics.child(metrics.admission_limit, model.name).set(0 if limit is None else limit)

    model.controller = ControllerThread(
        controller, window, requests, key=model.name, on_tick=on_tick
    )
    rebase(model, metrics)
    model.controller.start()
    menu = controller.menu
    log.info(
        "%s: load controller on (target %.1f ms), %d points from FLOPs %.3f down to %.3f",
        model.name, settings.latency_target_ms, len(menu),
        menu[0].flops_ratio if menu else float("nan"),
        menu[-1].flops_ratio if menu else float("nan"),
    )  # fmt: skip


def rebase(model: ServedModel, metrics: Metrics) -> None:
    """After the base thresholds changed (start, PUT, state directory)."""
    if model.controller is None:
        return
    with model.controller.controller.lock:
        model.controller.controller.rebase(model.thresholds)
    publish(model, metrics)


def publish(model: ServedModel, metrics: Metrics) -> None:
    if model.controller is None:
        return
    c = model.controller.controller
    point = c.current
    nan = float("nan")
    metrics.child(metrics.point_accuracy, model.name).set(point.accuracy if point else nan)
    metrics.child(metrics.point_flops, model.name).set(point.flops_ratio if point else nan)
    metrics.child(metrics.point_at_floor, model.name).set(1.0 if c.at_floor else 0.0)
