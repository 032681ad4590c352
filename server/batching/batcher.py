"""Dynamic batching with early exit and compaction, on one worker thread per model.

Every stage k has a FIFO queue: stage 0 holds new images, stage k >= 1 holds *parts* (a features
tensor still on the device, the indices of its rows that did not exit, and those rows' thresholds,
arrival times and timings as arrays). Which ready queue runs next is the scheduling policy
(ELF_SCHEDULING, server/batching/scheduling.py): age-aware (oldest request first, the default) or
deepest-first (work already paid for leaves first). A queue is ready when it holds a full batch,
when its head has waited max_queue_delay_ms, when nothing shallower is queued that could still feed
it (k >= 1), or when the batcher is stopping. Stage 0 is also ready at once when its rows came to
an idle worker with every queue empty ("eager"): waiting could not fill that batch, as nothing else
is in flight, so a lone request never pays the delay. Rows that arrive while the worker runs a
batch wait as before, so under load batches form behind the running one; rows that continue from
several batches are merged into full batches at later stages. After every stage the rows whose
softmax maximum reaches their own threshold (the exit rule of elf_core.exits) are answered at once
(their futures are resolved on their event loop) and dropped; the rest go to the next queue.
Inference never runs on an event loop; ONNX Runtime parallelises inside each run. With an Auditor
(ELF_AUDIT_RATE > 0), a sample of early answers continues to the final exit when every request
queue is empty (server/batching/audit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from elf_core.exits import leaves_at, softmax_max
from server.batching.audit import Auditor
from server.batching.rows import (
    NeverFitsError,
    Part,
    QueueFullError,
    Request,
    Row,
    RowResult,
    ShuttingDownError,
    StageExecutor,
    resolve,
)
from server.batching.scheduling import Policy, QueueView, Scheduler
from server.load.controller import DelayWindow
from server.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = [
    "Batcher",
    "NeverFitsError",
    "QueueFullError",
    "Request",
    "Row",
    "RowResult",
    "ShuttingDownError",
    "StageExecutor",
]


class Batcher:
    def __init__(
        self,
        executor: StageExecutor,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        model: str = "model",
        version: str = "",
        metrics: Metrics | None = None,
        audit: Auditor | None = None,
        scheduling: Policy = "age-aware",
        stage_labels: Sequence[str] | None = None,
    ) -> None:
        """stage_labels: the `stage` label of each stage's metrics (default "0".."K-1")."""
        self.executor = executor
        self.scheduler = Scheduler(scheduling, max_batch_size, max_queue_delay_s)
        self.audit = audit
        self.delays: DelayWindow | None = None  # the load controller's input, when it runs
        self.num_stages = executor.num_stages
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.model = model
        self.version = version  # a label of elf_queue_depth
        self.metrics = metrics
        self._stage_labels = list(stage_labels or map(str, range(self.num_stages)))
        # Other batchers of the same model (exit=final's, server/full_model.py): the model's
        # queue-depth gauge counts their rows too.
        self.depth_peers: list[Batcher] = []
        self._cond = threading.Condition()
        self._queues: list[deque[Any]] = [deque() for _ in range(self.num_stages)]
        self._queued = [0] * self.num_stages  # rows per queue
        self._admitted = 0  # rows accepted and not yet answered
        self._busy = False  # the worker holds a batch (from _take until it looks for the next)
        self._eager = False  # queue 0 began with rows that came to an idle, empty batcher
        self._answered_at = -math.inf  # when answers last went out
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- client side (event loop) ----

    def start(self) -> None:
        # What exists now (sessions, modules, the warmed model) lives as long as the process:
        # keep it out of the cyclic collector, whose full passes over it stalled the worker and
        # the event loop (in the bundled burst of bench.runner).
        gc.freeze()
        self._thread = threading.Thread(
            target=self._loop, name=f"batcher-{self.model}", daemon=True
        )
        self._thread.start()

    @property
    def admitted(self) -> int:
        return self._admitted

    def submit(self, rows: Sequence[Row]) -> None:
        """Admit all rows or none: QueueFullError / ShuttingDownError leave nothing queued."""
        with self._cond:
            if self._closing:
                raise ShuttingDownError("the server is shutting down")
            if len(rows) > self.max_queue_size:
                raise NeverFitsError(
                    f"{len(rows)} images in one request can never fit a queue of "
                    f"{self.max_queue_size} (ELF_MAX_QUEUE_SIZE); send fewer images, or raise "
                    "ELF_MAX_QUEUE_SIZE to at least ELF_MAX_IMAGES_PER_REQUEST"
                )
            if self._admitted + len(rows) > self.max_queue_size:
                raise QueueFullError(
                    f"queue full ({self._admitted} images waiting, limit {self.max_queue_size})"
                )
            if not self._busy and not any(self._queued):
                self._eager = True  # nothing to batch with: dispatch without the delay
            self._admitted += len(rows)
            self._queues[0].extend(rows)
            self._queued[0] += len(rows)
            self._set_depth()
            self._cond.notify()

    async def infer(
        self, xs: Sequence[np.ndarray], thresholds: Sequence[np.ndarray], timeout_s: float
    ) -> list[RowResult]:
        """Run images through the stages, each leaving at its first exit that reaches its threshold.

        Awaitable from the event loop; the stages run on the batcher's worker thread, batched with
        the rows of other requests.

        Args:
            xs: One preprocessed image per row, shaped as stage 0's input without the batch axis.
            thresholds: One threshold vector per row (one value per exit, the last 0).
            timeout_s: Longest wait for every row's answer.

        Returns:
            One result per row, in the order of `xs`: probabilities, exit index, queue and compute
            seconds.

        Raises:
            TimeoutError: After `timeout_s`; the request's rows are dropped.
        """
        now = time.perf_counter()
        if not xs:
            return []
        req = Request.start(asyncio.get_running_loop(), len(xs))
        rows = [
            Row(x, np.asarray(t, dtype=np.float64), req, i, now)
            for i, (x, t) in enumerate(zip(xs, thresholds, strict=True))
        ]
        self.submit(rows)
        try:
            async with asyncio.timeout(timeout_s):
                return await req.future
        except BaseException:
            req.cancelled = True
            req.future.cancel()
            raise

    def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new rows, answer every admitted one, then end the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("batcher %s: worker still busy after %ss", self.model, timeout_s)

    # ---- worker side ----

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                k = self._ready_stage(time.perf_counter())
                audit_k = None
                while k is None:
                    if self._closing and not any(self._queued):
                        if self.audit is not None:
                            self.audit.drop_all()
                        return
                    audit_k = self._audit_stage()
                    if audit_k is not None:
                        break
                    self._cond.wait(self._wait_time(time.perf_counter()))
                    k = self._ready_stage(time.perf_counter())
                rows: list[Row] = []
                parts: list[Part] = []
                if k is not None:
                    rows, parts = self._take(k)
                self._busy = bool(rows or parts)
                # An eager burst larger than one batch stays eager until queue 0 is drained.
                self._eager = self._eager and bool(self._queues[0])
                self._set_depth()
            if audit_k is not None and self.audit is not None:
                self.audit.run(audit_k, self.executor, time.perf_counter())
                continue
            if k is None or not (rows or parts):
                continue
            try:
                self._run(k, rows, parts)
            except Exception as exc:  # a bug here must not kill the worker or hang requests
                log.exception("batcher %s: internal error at stage %d", self.model, k)
                rows = rows or [r for p in parts for r in p.rows]
                self._deliver([(r, exc) for r in rows if not r.answered])

    def _audit_stage(self) -> int | None:
        """Audit work only on spare capacity: no request row queued at any stage."""
        if self.audit is None or self._closing or any(self._queued):
            return None
        return self.audit.ready_stage(time.perf_counter())

    def _views(self) -> list[QueueView]:
        views = []
        for k, q in enumerate(self._queues):
            if q:
                head = q[0]
                views.append(QueueView(k, self._queued[k], head.enqueued_at, head.arrived_at))
        return views

    def _ready_stage(self, now: float) -> int | None:
        return self.scheduler.pick(
            self._views(),
            now,
            closing=self._closing,
            eager=self._eager,
            answered_at=self._answered_at,
        )

    def _wait_time(self, now: float) -> float | None:
        return self.scheduler.wait_s(self._views(), now, self._answered_at)

    def _take(self, k: int) -> tuple[list[Row], list[Part]]:
        """Pop up to max_batch_size live rows from queue k (splitting a part if needed).
        Stage 0 returns rows; deeper stages return parts (their rows ride along)."""
        q = self._queues[k]
        rows: list[Row] = []
        parts: list[Part] = []
        taken = 0
        while q and taken < self.max_batch_size:
            if k == 0:
                row = q.popleft()
                self._queued[0] -= 1
                if row.cancelled:
                    self._admitted -= 1
                else:
                    rows.append(row)
                    taken += 1
                continue
            part: Part = q[0]
            head = part.split(self.max_batch_size - taken)
            if part.index.size == 0:
                q.popleft()
            self._queued[k] -= head.index.size
            live = [i for i, r in enumerate(head.rows) if not r.cancelled]
            self._admitted -= head.index.size - len(live)
            if live:
                parts.append(head if len(live) == head.index.size else head.select(live))
                taken += len(live)
        return rows, parts

    def _batch(self, k: int, rows: list[Row], parts: list[Part], t0: float) -> Part:
        """Stage k's input on the device (the part's handle) with its rows' bookkeeping."""
        if k == 0:
            x = np.stack([r.x for r in rows])  # type: ignore[misc]  # [b, C, H, W]
            for r in rows:
                r.x = None  # the batch holds the pixels now
            return Part.first(self.executor.to_device(x), rows, t0)
        x = self.executor.merge([(p.handle, p.index) for p in parts])
        return Part.join(x, parts, t0)

    def _run(self, k: int, rows: list[Row], parts: list[Part]) -> None:
        t0 = time.perf_counter()
        try:
            batch = self._batch(k, rows, parts, t0)
            rows = batch.rows
            features, logits = self.executor.run(k, batch.handle)
        except Exception as exc:
            log.exception("batcher %s: stage %d failed on %d rows", self.model, k, len(rows))
            rows = rows or [r for p in parts for r in p.rows]
            self._deliver([(r, exc) for r in rows])
            return
        t1 = time.perf_counter()
        batch.compute_s += t1 - t0
        probs, conf = softmax_max(logits)  # [b, C], [b]
        last = k == self.num_stages - 1
        exits = leaves_at(conf, batch.thresholds[:, k], last=last)
        done = np.flatnonzero(exits)
        # Survivors are queued before the answers go out, so that a client answered here and
        # resubmitting at once finds the batcher's true state (see _deliver).
        if self.audit is not None and not last:
            self.audit.select(k, features, done, probs.argmax(axis=1), t1)
        if done.size < len(rows):  # (never at the last stage)
            keep = np.flatnonzero(~exits)
            batch.handle = features
            survivors = batch.select(keep)
            survivors.enqueued_at = t1
            with self._cond:
                self._queues[k + 1].append(survivors)
                self._queued[k + 1] += keep.size
                self._set_depth()
        q_s, c_s = batch.queue_s.tolist(), batch.compute_s.tolist()
        self._deliver([(rows[i], RowResult(k, probs[i], q_s[i], c_s[i])) for i in done.tolist()])
        self._observe(k, len(rows), t1 - t0)

    def _deliver(self, answers: list[tuple[Row, RowResult | BaseException]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        m = self.metrics
        waited = m.child(m.queue_duration, self.model) if m is not None else None
        for row, value in answers:
            row.answered = True
            req = row.request
            if not req.cancelled and req.answer(row.slot, value):
                error = value if isinstance(value, BaseException) else None
                by_loop.setdefault(req.loop, []).append((req, error))
            if isinstance(value, RowResult):
                if waited is not None:
                    waited.observe(value.queue_s)
                if self.delays is not None:
                    self.delays.observe(value.queue_s)
        with self._cond:  # before the answers are visible: a client may resubmit at once
            self._admitted -= len(answers)
            if answers:
                self._answered_at = time.perf_counter()
            # The batch's compute is over: a row submitted from here on meets an idle worker
            # (eager when nothing is queued), not one that looks busy until it loops back.
            self._busy = False
        for loop, pairs in by_loop.items():
            # One wake-up per loop and batch, one future per request; a closed loop has nobody
            # waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve, pairs)

    def _set_depth(self) -> None:
        m = self.metrics
        if m is not None:
            peers = sum(sum(p._queued) for p in self.depth_peers)  # ints: no lock needed to read
            m.child(m.queue_depth, self.model, self.version).set(sum(self._queued) + peers)

    def _observe(self, k: int, batch: int, seconds: float) -> None:
        if self.delays is not None:
            self.delays.busy(seconds)  # the load controller's utilisation
        m = self.metrics
        if m is not None:
            stage = self._stage_labels[k]
            m.child(m.stage_duration, self.model, stage).observe(seconds)
            m.child(m.batch_size, self.model, stage).observe(batch)
