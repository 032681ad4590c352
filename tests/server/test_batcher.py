"""The batcher with fake stages: exits, compaction, merging, order, thresholds, limits.

Order is forced, never waited for: the fake stages' gate holds the worker inside a run and their
`started` event says it got there; `submit` queues rows synchronously; `IdleWatch` says when the
worker went back to waiting with rows still queued."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from server.batching.batcher import (
    Batcher,
    QueueFullError,
    Request,
    Row,
    RowResult,
    ShuttingDownError,
)
from server.batching.scheduling import Policy
from server.metrics import Metrics
from tests.server.fake_stages import FakeStages, row_inputs

INF = float("inf")


@contextmanager
def running(
    stages: FakeStages, scheduling: Policy = "deepest-first", **kw: float
) -> Iterator[Batcher]:
    args = {"max_batch_size": 4, "max_queue_delay_s": 0.001, "max_queue_size": 64}
    args.update(kw)
    batcher = Batcher(
        stages,
        max_batch_size=int(args["max_batch_size"]),
        max_queue_delay_s=args["max_queue_delay_s"],
        max_queue_size=int(args["max_queue_size"]),
        metrics=Metrics(),
        scheduling=scheduling,
    )
    batcher.start()
    try:
        yield batcher
    finally:
        stages.gate.set()
        batcher.stop(5)


def thr(*t: float) -> np.ndarray:
    return np.array(t, dtype=np.float64)


def submit(b: Batcher, ids: list[int], t: np.ndarray) -> asyncio.Future[list[RowResult]]:
    """Queue rows at once (Batcher.infer without waiting for the answers)."""
    now = time.perf_counter()
    req = Request.start(asyncio.get_running_loop(), len(ids))
    rows = [Row(x, t, req, i, now) for i, x in enumerate(row_inputs(ids))]
    b.submit(rows)
    return req.future


async def started(stages: FakeStages) -> None:
    """Until the worker is inside a stage run (held there while the gate is clear)."""
    assert await asyncio.to_thread(stages.started.wait, 10)


class IdleWatch(threading.Condition):
    """The batcher's condition, with an event set whenever the worker starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_rows_exit_at_their_first_confident_exit_and_answers_keep_order() -> None:
    confs = [[0.9, 0.5, 0.6], [0.3, 0.95, 0.6], [0.3, 0.4, 0.7], [0.99, 0.99, 0.99]]
    labels = [[1, 2, 3], [0, 2, 1], [1, 1, 3], [3, 0, 0]]
    stages = FakeStages(confs, labels)

    async def go() -> list:
        with running(stages) as b:
            return await b.infer(row_inputs(range(4)), [thr(0.8, 0.8, 0)] * 4, 5)

    res = asyncio.run(go())
    assert [r.exit_index for r in res] == [0, 1, 2, 0]
    assert [int(np.argmax(r.probs)) for r in res] == [1, 2, 3, 3]
    np.testing.assert_allclose([r.probs.max() for r in res], [0.9, 0.95, 0.7, 0.99])
    # Compaction: stage 1 ran only the rows that did not exit at stage 0, stage 2 only row 2.
    assert stages.batches == [(0, [0, 1, 2, 3]), (1, [1, 2]), (2, [2])]
    assert all(r.queue_s >= 0 and r.compute_s > 0 for r in res)


def test_rows_continuing_from_two_batches_merge_into_one_full_batch() -> None:
    # 8 rows, batches of 4: rows 0, 2, 4, 6 exit at stage 0, the others continue.
    confs = [[0.9 if i % 2 == 0 else 0.2, 0.9] for i in range(8)]
    stages = FakeStages(confs)

    async def go() -> list:
        # A long delay: stage 1 waits for a full batch while stage 0 still has rows queued.
        with running(stages, max_queue_delay_s=0.5) as b:
            return await b.infer(row_inputs(range(8)), [thr(0.5, 0)] * 8, 5)

    res = asyncio.run(go())
    assert [r.exit_index for r in res] == [0, 1] * 4
    assert stages.sizes(0) == [4, 4]
    assert stages.batches[-1] == (1, [1, 3, 5, 7])
    assert stages.merges == [2]


def test_a_part_larger_than_the_free_room_is_split() -> None:
    confs = [[0.1, 0.9]] * 5  # nobody exits at stage 0
    stages = FakeStages(confs)

    async def go() -> list:
        with running(stages, max_batch_size=3, max_queue_delay_s=0.2) as b:
            return await b.infer(row_inputs(range(5)), [thr(0.5, 0)] * 5, 5)

    res = asyncio.run(go())
    assert [r.exit_index for r in res] == [1] * 5
    assert stages.sizes(0) == [3, 2]
    # Stage 1: the first part (3 rows) whole, then the second part (2 rows).
    assert [ids for k, ids in stages.batches if k == 1] == [[0, 1, 2], [3, 4]]


def test_per_request_thresholds_inside_one_shared_batch() -> None:
    confs = [[0.7, 0.7, 0.7]] * 3
    stages = FakeStages(confs)

    async def go() -> list:
        with running(stages, max_queue_delay_s=0.2) as b:
            return await asyncio.gather(  # type: ignore[return-value]
                b.infer(row_inputs([0]), [thr(0.6, 0.6, 0)], 5),  # default-like: exits at 0
                b.infer(row_inputs([1]), [thr(INF, INF, 0)], 5),  # exit=final
                b.infer(row_inputs([2]), [thr(0.8, 0.65, 0)], 5),  # its own threshold
            )

    res = [r[0] for r in asyncio.run(go())]
    assert [r.exit_index for r in res] == [0, 2, 1]
    assert stages.batches[0] == (0, [0, 1, 2])  # one shared batch at stage 0


def test_timeout_drops_the_rows_and_the_batcher_keeps_serving() -> None:
    stages = FakeStages([[0.9, 0.9]] * 4)
    stages.gate.clear()  # stage runs block until the gate opens

    async def go() -> list:
        with running(stages, max_queue_size=8) as b:
            with pytest.raises(TimeoutError):
                await b.infer(row_inputs([0, 1]), [thr(0.5, 0)] * 2, 0.05)
            stages.gate.set()
            res = await b.infer(row_inputs([2]), [thr(0.5, 0)], 5)
            # The timed-out rows were dropped or answered before row 2 (one worker, in order),
            # and a batch's rows leave the count before their answers are visible.
            assert b.admitted == 0
            return res

    res = asyncio.run(go())
    assert res[0].exit_index == 0


def test_full_queue_refuses_whole_requests_and_recovers() -> None:
    stages = FakeStages([[0.9, 0.9]] * 6)
    stages.gate.clear()

    async def go() -> None:
        with running(stages, max_queue_size=3) as b:
            first = submit(b, [0, 1], thr(0.5, 0))
            await started(stages)  # the two rows are in flight, held at the gate
            with pytest.raises(QueueFullError):
                await b.infer(row_inputs([2, 3]), [thr(0.5, 0)] * 2, 5)
            assert b.admitted == 2  # nothing of the refused request was queued
            stages.gate.set()
            assert [r.exit_index for r in await first] == [0, 0]
            res = await b.infer(row_inputs([4, 5]), [thr(0.5, 0)] * 2, 5)
            assert [r.exit_index for r in res] == [0, 0]

    asyncio.run(go())


def test_stop_answers_queued_rows_then_refuses_new_ones() -> None:
    stages = FakeStages([[0.9, 0.9]] + [[0.1, 0.9]] * 3)
    stages.gate.clear()

    async def go() -> None:
        b = Batcher(stages, max_batch_size=8, max_queue_delay_s=30.0, max_queue_size=8)
        watch = b._cond = IdleWatch()
        b.start()
        first = submit(b, [0], thr(0.5, 0))
        await started(stages)  # row 0 went to the idle worker at once; its run is held
        pending = submit(b, [1, 2, 3], thr(0.5, 0))
        watch.waiting.clear()
        stages.gate.set()
        assert (await first)[0].exit_index == 0
        # The worker is back to waiting with rows 1-3 queued: they came while it was busy, so
        # they wait for a fuller batch (30 s) instead of running now.
        assert await asyncio.to_thread(watch.waiting.wait, 10)
        assert not pending.done()
        assert stages.batches == [(0, [0])]
        t0 = time.perf_counter()
        await asyncio.to_thread(b.stop, 5)
        res = await pending
        assert time.perf_counter() - t0 < 2
        assert [r.exit_index for r in res] == [1, 1, 1]
        with pytest.raises(ShuttingDownError):
            await b.infer(row_inputs([0]), [thr(0.5, 0)], 1)

    asyncio.run(go())


def test_a_lone_request_is_dispatched_without_the_queue_delay() -> None:
    stages = FakeStages([[0.1, 0.9]] * 3)

    async def go() -> list[float]:
        # A 30 s delay: any wait for a fuller batch would time the requests out.
        with running(stages, max_batch_size=8, max_queue_delay_s=30.0) as b:
            waits = []
            for i in range(3):  # one after another, as a client at concurrency 1 sends them
                t0 = time.perf_counter()
                res = await b.infer(row_inputs([i]), [thr(0.5, 0)], 2)
                waits.append(time.perf_counter() - t0)
                assert res[0].exit_index == 1
                assert res[0].queue_s < 1
            return waits

    waits = asyncio.run(go())
    assert max(waits) < 1
    assert stages.batches == [(0, [0]), (1, [0]), (0, [1]), (1, [1]), (0, [2]), (1, [2])]


def test_rows_arriving_while_the_worker_is_busy_still_form_a_batch() -> None:
    stages = FakeStages([[0.9, 0.9]] * 6)
    stages.gate.clear()  # the first run is held: the worker is busy meanwhile

    async def go() -> None:
        with running(stages, max_batch_size=8, max_queue_delay_s=0.2) as b:
            first = submit(b, [0], thr(0.5, 0))
            await started(stages)  # row 0's run is held: the worker is busy
            rest = [submit(b, [i], thr(0.5, 0)) for i in range(1, 6)]
            stages.gate.set()
            t0 = time.perf_counter()
            await asyncio.gather(first, *rest)
            # The five waited for the delay (the batch never filled), not for nothing.
            assert time.perf_counter() - t0 > 0.1

    asyncio.run(go())
    assert stages.batches == [(0, [0]), (0, [1, 2, 3, 4, 5])]


def test_a_failing_stage_fails_its_rows_only() -> None:
    stages = FakeStages([[0.1, 0.9]] * 2)
    stages.fail_stage = 1

    async def go() -> None:
        with running(stages) as b:
            with pytest.raises(RuntimeError, match="stage 1 exploded"):
                await b.infer(row_inputs([0]), [thr(0.5, 0)], 5)
            stages.fail_stage = None
            res = await b.infer(row_inputs([1]), [thr(0.5, 0)], 5)
            assert res[0].exit_index == 1
            assert b.admitted == 0

    asyncio.run(go())


def test_metrics_see_every_stage_batch() -> None:
    stages = FakeStages([[0.9, 0.9], [0.1, 0.9]])
    metrics = Metrics()

    async def go() -> None:
        b = Batcher(
            stages,
            max_batch_size=4,
            max_queue_delay_s=0.01,
            max_queue_size=8,
            model="m",
            metrics=metrics,
        )
        b.start()
        await b.infer(row_inputs([0, 1]), [thr(0.5, 0)] * 2, 5)
        b.stop(5)

    asyncio.run(go())
    get = metrics.registry.get_sample_value
    assert get("elf_batch_size_sum", {"model": "m", "stage": "0"}) == 2
    assert get("elf_batch_size_sum", {"model": "m", "stage": "1"}) == 1
    assert get("elf_stage_duration_seconds_count", {"model": "m", "stage": "1"}) == 1
    assert get("elf_queue_duration_seconds_count", {"model": "m"}) == 2
    assert get("elf_queue_depth", {"model": "m", "version": ""}) == 0


def test_one_request_future_gathers_rows_answered_in_different_batches() -> None:
    """Rows of one request leave at different stages and batches; its one future resolves once,
    with every answer in the request's order, and an empty request answers at once."""
    confs = [[0.2, 0.9], [0.9, 0.9], [0.2, 0.9], [0.9, 0.9], [0.2, 0.9]]
    stages = FakeStages(confs, [[i % 4, (i + 1) % 4] for i in range(5)])

    async def go() -> tuple[list[RowResult], list[RowResult]]:
        with running(stages, max_batch_size=2) as b:
            empty = await b.infer([], [], 5)
            return empty, await b.infer(row_inputs(range(5)), [thr(0.5, 0)] * 5, 5)

    empty, res = asyncio.run(go())
    assert empty == []
    assert [r.exit_index for r in res] == [1, 0, 1, 0, 1]
    assert [int(np.argmax(r.probs)) for r in res] == [1, 1, 3, 3, 1]
    assert sorted({k for k, _ in stages.batches}) == [0, 1] and len(stages.batches) > 2


def test_request_answers_once_and_the_first_error_wins() -> None:
    loop = asyncio.new_event_loop()
    try:
        req = Request.start(loop, 3)
        ok = RowResult(0, np.array([1.0]), 0.0, 0.0)
        assert not req.answer(2, ok) and not req.answer(0, ok)
        assert req.answer(1, ok) and req.results == [ok, ok, ok]
        failed = Request.start(loop, 3)
        assert not failed.answer(0, ok)
        assert failed.answer(1, RuntimeError("boom"))  # completes the request (as an error)
        assert not failed.answer(2, ok) and not failed.answer(2, RuntimeError("again"))
    finally:
        loop.close()


def test_start_freezes_what_exists_out_of_the_cyclic_collector() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with running(FakeStages([[0.9]])):
        assert gc.get_freeze_count() > 0
