"""Prometheus metrics (docs/ARCHITECTURE.md): one registry per app, base units, low cardinality.

With several worker processes (PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported;
`elf-serve --workers N` does it), every worker writes its values to files in that directory and
/metrics renders all of them with prometheus_client's MultiProcessCollector: counters and
histograms are summed over the workers (live and exited); each gauge states its aggregation
(`multiprocess_mode`, ignored in a single process):
  elf_queue_depth        livesum  images waiting in all live workers together
  elf_exit_threshold     liveall  one series per live worker (label pid): shows a worker that
                                  has not caught up with the state directory
  elf_model_info         livemax  1 while any live worker serves the model
  elf_batch_cap          liveall  one series per live worker (ELF_BATCH_CAP=auto measures each)
  elf_audit_expected_agreement  livemax  a property of the model directory, the same everywhere
  elf_operating_point_*  liveall  one series per live worker (each runs its own controller)
  elf_requests_in_flight livesum  inference requests in flight in all live workers together
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess(workers: int) -> Path | None:
    """Before the workers start: point PROMETHEUS_MULTIPROC_DIR at an empty directory.

    A directory the operator set is emptied of its *.db files (prometheus_client requires a
    clean directory per run); otherwise, with several workers, a temporary one is made and
    returned (the caller removes it at exit). One worker without the variable: nothing to do.
    """
    given = multiprocess_dir()
    if given is not None:
        Path(given).mkdir(parents=True, exist_ok=True)
        for old in Path(given).glob("*.db"):
            old.unlink()
        return None
    if workers <= 1:
        return None
    made = Path(tempfile.mkdtemp(prefix="elf-metrics-"))
    os.environ[MULTIPROC_ENV] = str(made)
    return made


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
        # protocol: http (route: the path template, status: the HTTP status) or grpc (route:
        # /inference.GRPCInferenceService/<method>, status: the gRPC status code's name).
        self.requests = Counter(
            "elf_requests",
            "Requests by route and status, per protocol (http, grpc)",
            ["route", "status", "protocol"],
            registry=r,
        )
        # version: the model version that answered (several may be served, server/repository.py).
        self.images = Counter("elf_images", "Images answered", ["model", "version"], registry=r)
        self.exits = Counter(
            "elf_exits",
            "Images answered per exit taken",
            ["model", "version", "exit"],
            registry=r,
        )
        self.flops_executed = Counter(
            "elf_flops_executed",
            "FLOPs executed for answered images (2 x MACs)",
            ["model", "version"],
            registry=r,
        )
        self.flops_full = Counter(
            "elf_flops_full",
            "FLOPs the full backbone would have spent on the same images",
            ["model", "version"],
            registry=r,
        )
        self.request_duration = Histogram(
            "elf_request_duration_seconds",
            "Request duration, per protocol (http, grpc)",
            ["route", "protocol"],
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
            "elf_queue_depth",
            "Images waiting in the batcher (all stages)",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.exit_threshold = Gauge(
            "elf_exit_threshold",
            "Current default confidence threshold per exit",
            ["model", "exit"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.rejected = Counter(
            "elf_rejected", "Requests refused, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "elf_model_info",
            "Loaded models (value 1)",
            ["model", "version", "providers"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.batch_cap = Gauge(
            "elf_batch_cap",
            "Most rows per stage batch (ELF_BATCH_CAP: ELF_MAX_BATCH_SIZE or measured at startup)",
            ["model"],
            registry=r,
            multiprocess_mode="liveall",
        )

        self._audit_and_controller(r)

    def _audit_and_controller(self, r: CollectorRegistry) -> None:
        # server/batching/audit.py: early answers finished at full depth on spare capacity.
        self.audit_images = Counter(
            "elf_audit_images",
            "Early-exited images finished at the final exit to audit them, by exit taken",
            ["model", "exit"],
            registry=r,
        )
        self.audit_agree = Counter(
            "elf_audit_agree",
            "Audited images whose early answer equals the final exit's class",
            ["model", "exit"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "elf_audit_dropped",
            "Images chosen for audit and dropped (full, stale, shutdown, error)",
            ["model", "reason"],
            registry=r,
        )
        self.audit_expected = Gauge(
            "elf_audit_expected_agreement",
            "Agreement of each exit with the final exit on the validation split (export time)",
            ["model", "exit"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # server/load/controller.py: the load-adaptive operating point.
        self.point_accuracy = Gauge(
            "elf_operating_point_accuracy",
            "Validation balanced top-1 of the default thresholds in use (0..1)",
            ["model"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.point_flops = Gauge(
            "elf_operating_point_flops_ratio",
            "Validation FLOPs ratio (executed / full) of the default thresholds in use",
            ["model"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.point_at_floor = Gauge(
            "elf_operating_point_at_floor",
            "1 when the controller is at its cheapest allowed point (ELF_MIN_ACCURACY)",
            ["model"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.admission_limit = Gauge(
            "elf_operating_point_admission_limit",
            "Inference requests admitted in flight while the controller sheds load at its "
            "cheapest point (beyond: 503, reason overloaded); 0 = no limit",
            ["model"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.requests_in_flight = Gauge(
            "elf_requests_in_flight",
            "Inference requests admitted and not yet answered (sampled by the load controller)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.point_moves = Counter(
            "elf_operating_point_moves",
            "Moves of the default thresholds by the load controller, by direction",
            ["model", "direction"],
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
        self, model: str, version: str, exits: Sequence[int], flops_executed: int, flops_full: int
    ) -> None:
        """Count images answered with 200, so that exits summed == images served."""
        self.child(self.images, model, version).inc(len(exits))
        for k in exits:
            self.child(self.exits, model, version, str(k)).inc()
        self.child(self.flops_executed, model, version).inc(flops_executed)
        self.child(self.flops_full, model, version).inc(flops_full)

    def forget_version(self, model: str, version: str, providers: str) -> None:
        """A model version was unloaded: its gauges go (0 first: in multiprocess mode the
        worker's file keeps the last value)."""
        for metric, values in (
            (self.model_info, (model, version, providers)),
            (self.queue_depth, (model, version)),
        ):
            metric.labels(*values).set(0)
            metric.remove(*values)
            self._children.pop((id(metric), values), None)

    def render(self) -> tuple[bytes, str]:
        """This app's registry, or every worker's values in multiprocess mode."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)
        return generate_latest(merged), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exited() -> None:
        """Drop this worker's live gauges from the shared files (its counters stay summed)."""
        path = multiprocess_dir()
        if path is not None:
            multiprocess.mark_process_dead(os.getpid(), path)
