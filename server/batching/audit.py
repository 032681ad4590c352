"""Online agreement monitor: a sample of early answers finished at full depth, on spare capacity.

After a stage, each row that left at that (auxiliary) exit is chosen with probability
ELF_AUDIT_RATE. Its answer has already gone out; the chosen rows' features (still on the device)
wait in the audit queue of the next stage with the class they were answered with. The batcher's
worker runs audit work only when every request queue is empty, deepest audit stage first, and
at the last stage compares the final exit's class with the early answer: per exit, counters of
audited images and of agreements (elf_audit_images_total, elf_audit_agree_total).

Never ahead of a request: requests always go first, so under load audit rows wait, and a row
older than `max_age_s` is dropped (reason "stale"), as is a new one when `max_rows` wait already
("full") and everything still waiting at shutdown ("shutdown"); a failed stage run drops its rows
("error"). All counted in elf_audit_dropped_total. What a request can meet is one audit batch
already running when it arrives (the worker does not preempt a stage run): at most one stage of
at most max_batch_size rows.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.batching.rows import StageExecutor
from server.metrics import Metrics

log = logging.getLogger(__name__)

DROP_REASONS = ("full", "stale", "shutdown", "error")


@dataclass(eq=False)
class AuditPart:
    handle: Any  # features [b, ...] on the device
    index: np.ndarray  # int64 [m]: the audited rows of `handle`
    exit_index: np.ndarray  # int64 [m]: the exit each row was answered at
    predicted: np.ndarray  # int64 [m]: the class it was answered with
    enqueued_at: float


class Auditor:
    """Audit queues for stages 1..K-1; driven by the batcher's worker thread only."""

    def __init__(
        self,
        rate: float,
        num_stages: int,
        *,
        max_batch_size: int,
        max_rows: int | None = None,
        max_age_s: float = 5.0,
        model: str = "model",
        metrics: Metrics | None = None,
        seed: int | None = None,
    ) -> None:
        self.rate = rate
        self.num_stages = num_stages
        self.max_batch_size = max_batch_size
        self.max_rows = max_rows if max_rows is not None else 4 * max_batch_size
        self.max_age_s = max_age_s
        self.model = model
        self.metrics = metrics
        self._rng = np.random.default_rng(seed)
        self._queues: list[deque[AuditPart]] = [deque() for _ in range(num_stages)]
        self._rows = 0
        if metrics is not None:  # every series exists from the start, at 0
            for k in range(num_stages - 1):
                metrics.child(metrics.audit_images, model, str(k))
                metrics.child(metrics.audit_agree, model, str(k))
            for reason in DROP_REASONS:
                metrics.child(metrics.audit_dropped, model, reason)

    @property
    def pending(self) -> int:
        return self._rows

    def select(
        self, k: int, features: Any, exited: np.ndarray, predicted: np.ndarray, now: float
    ) -> None:
        """After stage k < K-1: sample rows of `exited` (indices into the batch) for audit."""
        if features is None or exited.size == 0 or self.rate <= 0.0:
            return
        chosen = exited[self._rng.random(exited.size) < self.rate]
        if chosen.size == 0:
            return
        self.expire(now)
        if self._rows + chosen.size > self.max_rows:
            self._drop("full", chosen.size)
            return
        exit_index = np.full(chosen.size, k, dtype=np.int64)
        part = AuditPart(features, chosen.astype(np.int64), exit_index, predicted[chosen], now)
        self._queues[k + 1].append(part)
        self._rows += chosen.size

    def expire(self, now: float) -> None:
        for q in self._queues:
            while q and now - q[0].enqueued_at > self.max_age_s:
                self._rows -= q[0].index.size
                self._drop("stale", q.popleft().index.size)

    def ready_stage(self, now: float) -> int | None:
        """The deepest stage with audit rows (after dropping stale ones), or None."""
        self.expire(now)
        for k in reversed(range(self.num_stages)):
            if self._queues[k]:
                return k
        return None

    def drop_all(self) -> None:
        for q in self._queues:
            while q:
                self._drop("shutdown", q.popleft().index.size)
        self._rows = 0

    def run(self, k: int, executor: StageExecutor, now: float) -> None:
        """One audit batch through stage k; at the last stage, count agreement."""
        parts = self._take(k)
        exit_index = np.concatenate([p.exit_index for p in parts])
        predicted = np.concatenate([p.predicted for p in parts])
        try:
            x = executor.merge([(p.handle, p.index) for p in parts])
            features, logits = executor.run(k, x)
        except Exception:
            log.exception("audit %s: stage %d failed on %d rows", self.model, k, exit_index.size)
            self._drop("error", exit_index.size)
            return
        if k < self.num_stages - 1:
            index = np.arange(exit_index.size, dtype=np.int64)
            self._queues[k + 1].append(AuditPart(features, index, exit_index, predicted, now))
            self._rows += exit_index.size
            return
        # Softmax keeps the argmax: the final exit's class is the argmax of its logits [m, C].
        self._count(exit_index, predicted == np.argmax(logits, axis=1))

    def _take(self, k: int) -> list[AuditPart]:
        q, taken, room = self._queues[k], [], self.max_batch_size
        while q and room > 0:
            part = q[0]
            if part.index.size <= room:
                taken.append(q.popleft())
            else:  # split: the head goes now, the rest stays queued
                taken.append(
                    AuditPart(
                        part.handle,
                        part.index[:room],
                        part.exit_index[:room],
                        part.predicted[:room],
                        part.enqueued_at,
                    )
                )
                part.index = part.index[room:]
                part.exit_index = part.exit_index[room:]
                part.predicted = part.predicted[room:]
            room -= taken[-1].index.size
        self._rows -= self.max_batch_size - room
        return taken

    def _count(self, exit_index: np.ndarray, agree: np.ndarray) -> None:
        m = self.metrics
        if m is None:
            return
        for k in np.unique(exit_index):
            mask = exit_index == k
            m.child(m.audit_images, self.model, str(int(k))).inc(int(mask.sum()))
            m.child(m.audit_agree, self.model, str(int(k))).inc(int(agree[mask].sum()))

    def _drop(self, reason: str, n: int) -> None:
        m = self.metrics
        if m is not None and n:
            m.child(m.audit_dropped, self.model, reason).inc(n)
