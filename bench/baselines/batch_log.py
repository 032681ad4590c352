"""What a batching peer saw: a histogram of its batch sizes, written to a JSON file twice a
second by a daemon thread (the bench reads it before and after each measurement, so a peer that
does not really batch shows up as mean batch size 1 in the results).

Also the stand-in for KServe's batcher: KServe batches in its Go agent sidecar (an
InferenceService's `spec.predictor.batcher: {maxBatchSize, maxLatency}`), in front of the Python
model server, which itself has none. `AsyncBatcher` does in the model server's event loop what the
agent does in front of it: collect requests until `max_batch_size` are there or `max_latency_s`
passed since the first, run them as one batch, answer each. Torch-free; numpy only.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np


class BatchLog:
    def __init__(self, path: Path | None, period_s: float = 0.5) -> None:
        self.path = path
        self.sizes: Counter[int] = Counter()
        self._lock = threading.Lock()
        if path is not None:
            threading.Thread(target=self._writer, args=(period_s,), daemon=True).start()

    def add(self, size: int) -> None:
        with self._lock:
            self.sizes[size] += 1

    def write(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = {str(k): v for k, v in sorted(self.sizes.items())}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "batch_sizes": data}), encoding="utf-8")
        tmp.replace(self.path)

    def _writer(self, period_s: float) -> None:
        while True:
            time.sleep(period_s)
            self.write()


def read_batch_sizes(path: Path) -> Counter[int]:
    """The histogram a BatchLog wrote ({} when the file is not there yet)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Counter()
    return Counter({int(k): int(v) for k, v in data["batch_sizes"].items()})


class AsyncBatcher:
    """Requests of one event loop -> batches of at most `max_batch_size` rows, run in a thread.

    `run` maps [B, ...] to B results (rows of an array). One batch runs at a time; requests that
    arrive meanwhile form the next one, which starts as soon as the running one ends.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_latency_s: float,
        log: BatchLog,
    ) -> None:
        self.run, self.max_batch_size, self.max_latency_s = run, max_batch_size, max_latency_s
        self.log = log
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._serve(self._queue))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _collect(
        self, queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]]
    ) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_latency_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _serve(
        self, queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]]
    ) -> None:
        while True:
            batch = await self._collect(queue)
            self.log.add(len(batch))
            xs = np.stack([x for x, _ in batch])
            try:
                out = await asyncio.to_thread(self.run, xs)
            except Exception as exc:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), row in zip(batch, out, strict=True):
                if not f.done():
                    f.set_result(row)
