"""Prometheus metrics (DESIGN.md "Metrics"): one registry per app, base units, low cardinality."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds, from 50 us: a small model's stage runs in well under a millisecond.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

M = TypeVar("M", Counter, Gauge, Histogram)


class Metrics:
    """Every `elf_*` metric, registered in `registry` (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # (metric id, label values) -> child: labels() takes a lock and builds keys every call.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "elf_requests",
            "HTTP requests by route template and status",
            ["route", "status"],
            registry=r,
        )
        self.images = Counter("elf_images", "Images answered", ["model"], registry=r)
        self.exits = Counter(
            "elf_exits", "Images answered per exit taken", ["model", "exit"], registry=r
        )
        self.flops_executed = Counter(
            "elf_flops_executed",
            "FLOPs executed for answered images (2 x MACs)",
            ["model"],
            registry=r,
        )
        self.flops_full = Counter(
            "elf_flops_full",
            "FLOPs the full backbone would have spent on the same images",
            ["model"],
            registry=r,
        )
        self.request_duration = Histogram(
            "elf_request_duration_seconds",
            "HTTP request duration",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "elf_queue_duration_seconds",
            "Time an image waited in the batcher's queues",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "elf_stage_duration_seconds",
            "Time of one batch through one stage (merge included)",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "elf_batch_size",
            "Rows per stage batch",
            ["model", "stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "elf_queue_depth", "Images waiting in the batcher (all stages)", ["model"], registry=r
        )
        self.exit_threshold = Gauge(
            "elf_exit_threshold",
            "Current default confidence threshold per exit",
            ["model", "exit"],
            registry=r,
        )
        self.rejected = Counter(
            "elf_rejected", "Requests refused, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "elf_model_info",
            "Loaded models (value 1)",
            ["model", "version", "providers"],
            registry=r,
        )

    def child(self, metric: M, *values: str) -> M:
        """metric.labels(*values) (in label-name order), created once and then reused."""
        key = (id(metric), values)
        found: M | None = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def set_thresholds(self, model: str, thresholds: Sequence[float]) -> None:
        for k, t in enumerate(thresholds):
            self.exit_threshold.labels(model=model, exit=str(k)).set(t)

    def record_answers(
        self, model: str, exits: Sequence[int], flops_executed: int, flops_full: int
    ) -> None:
        """Count images answered with 200, so that exits summed == images served."""
        self.child(self.images, model).inc(len(exits))
        for k in exits:
            self.child(self.exits, model, str(k)).inc()
        self.child(self.flops_executed, model).inc(flops_executed)
        self.child(self.flops_full, model).inc(flops_full)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
