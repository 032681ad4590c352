"""The scheduling rule on hand-set clocks, the parts' array bookkeeping, and the policy wired
through the batcher (ELF_SCHEDULING)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from server.batching.rows import Part
from server.batching.scheduling import POLICIES, QueueView, Scheduler
from server.settings import Settings
from tests.server.fake_stages import FakeStages
from tests.server.test_batcher import running, submit, thr

DELAY = 0.002


def rule(policy: str, max_batch: int = 8) -> Scheduler:
    return Scheduler(policy, max_batch, DELAY)  # type: ignore[arg-type]


def pick(policy: str, queues: list[QueueView], now: float, max_batch: int = 8) -> int | None:
    return rule(policy, max_batch).pick(queues, now, closing=False, eager=False)


def test_deepest_first_runs_the_deepest_ready_queue_even_when_shallower_rows_are_older() -> None:
    queues = [QueueView(0, 8, 0.0, 0.0), QueueView(2, 3, 0.5, 0.1)]
    assert pick("deepest-first", queues, now=1.0) == 2
    assert pick("age-aware", queues, now=1.0) == 0  # stage 0's head arrived first


def test_age_aware_counts_the_delay_from_arrival_deepest_first_from_entering_the_queue() -> None:
    # Stage 1's head entered its queue now but its request arrived 10 ms ago; stage 0 holds a
    # fresh row, so "nothing shallower could feed it" does not apply.
    queues = [QueueView(0, 1, 1.0, 1.0), QueueView(1, 3, 1.0, 0.99)]
    assert pick("deepest-first", queues, now=1.0) is None
    assert rule("deepest-first").wait_s(queues, 1.0) == pytest.approx(DELAY)
    assert pick("age-aware", queues, now=1.0) == 1
    assert pick("deepest-first", queues, now=1.0 + DELAY) == 1


def test_age_aware_runs_the_fuller_batch_of_a_cohort_and_breaks_ties_by_depth() -> None:
    # Every row arrived together (a burst): stage 0 fills a batch, stage 1 does not yet.
    burst = [QueueView(0, 40, 0.0, 0.0), QueueView(1, 5, 0.9, 0.0), QueueView(2, 2, 0.95, 0.0)]
    assert pick("age-aware", burst, now=1.0) == 0
    assert pick("deepest-first", burst, now=1.0) == 2
    full_too = [QueueView(0, 40, 0.0, 0.0), QueueView(1, 9, 0.9, 0.0)]
    assert pick("age-aware", full_too, now=1.0) == 1  # both fill a batch of 8: the deeper
    # Outside the cohort window the older head wins however small its batch.
    apart = [QueueView(0, 40, 0.0, 0.5), QueueView(1, 1, 0.9, 0.5 - 2 * DELAY)]
    assert pick("age-aware", apart, now=1.0) == 1


def test_ready_rules_shared_by_both_policies() -> None:
    for policy in POLICIES:
        r = rule(policy)
        fresh = [QueueView(0, 2, 1.0, 1.0)]
        assert r.pick(fresh, 1.0, closing=False, eager=False) is None
        assert r.pick(fresh, 1.0, closing=False, eager=True) == 0  # came to an idle batcher
        assert r.pick(fresh, 1.0, closing=True, eager=False) == 0  # stopping: drain
        assert r.pick([QueueView(0, 8, 1.0, 1.0)], 1.0, closing=False, eager=False) == 0  # full
        alone = [QueueView(2, 1, 1.0, 1.0)]  # nothing shallower could still feed it
        assert r.pick(alone, 1.0, closing=False, eager=False) == 2
        assert r.pick([], 1.0, closing=False, eager=False) is None
        assert r.wait_s([], 1.0) is None


def test_part_split_and_select_keep_the_row_arrays_aligned() -> None:
    rows = [object() for _ in range(5)]
    part = Part(
        handle="features",
        index=np.array([4, 0, 3, 1, 2]),
        rows=rows,  # type: ignore[arg-type]
        thresholds=np.arange(10.0).reshape(5, 2),
        arrived=np.array([5.0, 1.0, 4.0, 2.0, 3.0]),
        queue_s=np.arange(5.0) / 10,
        compute_s=np.arange(5.0) / 100,
        enqueued_at=7.0,
    )
    assert part.arrived_at == 1.0  # the oldest row, not the first
    head = part.split(2)
    assert head.index.tolist() == [4, 0] and head.rows == rows[:2]
    assert head.thresholds[:, 0].tolist() == [0.0, 2.0] and head.enqueued_at == 7.0
    assert part.index.tolist() == [3, 1, 2] and part.rows == rows[2:]
    assert part.arrived.tolist() == [4.0, 2.0, 3.0] and part.queue_s.tolist() == [0.2, 0.3, 0.4]
    picked = part.select(np.array([0, 2]))
    assert picked.rows == [rows[2], rows[4]] and picked.index.tolist() == [3, 2]
    assert picked.compute_s.tolist() == [0.02, 0.04] and picked.thresholds[:, 1].tolist() == [5, 9]


@pytest.mark.parametrize("policy", POLICIES)
def test_both_policies_answer_every_row_at_its_exit_with_its_stage_times(policy: str) -> None:
    # Rows 0, 1: exit 0; rows 2, 3: exit 1; rows 4, 5: final (exit 2). Each stage run sleeps
    # 20 ms, so a row's compute time counts the stages it went through.
    confs = [[0.9, 0.3, 0.3]] * 2 + [[0.3, 0.9, 0.3]] * 2 + [[0.3, 0.3, 0.3]] * 2
    stages = FakeStages(confs, delay_s=0.02)

    async def go() -> list:
        with running(stages, policy, max_batch_size=8) as b:  # type: ignore[arg-type]
            return list(await submit(b, list(range(6)), thr(0.8, 0.8, 0.0)))

    res = asyncio.run(go())
    assert [r.exit_index for r in res] == [0, 0, 1, 1, 2, 2]
    for r in res:
        assert (r.exit_index + 1) * 0.02 <= r.compute_s < (r.exit_index + 2) * 0.02
        assert r.queue_s >= 0
    assert stages.sizes(0) == [6] and stages.sizes(1) == [4] and stages.sizes(2) == [2]


def test_the_setting_names_the_policy_and_refuses_others() -> None:
    assert Settings().scheduling == "age-aware"
    assert Settings(scheduling="age-aware").scheduling == "age-aware"
    with pytest.raises(ValidationError):
        Settings(scheduling="shortest-first")  # type: ignore[arg-type]


def test_age_aware_holds_a_short_stage_0_batch_one_delay_after_answers_went_out() -> None:
    # Stage 0's rows arrived long ago, but answers went out just now: the clients answered are
    # about to send again, so a batch short of full waits for them (at most one delay).
    queues = [QueueView(0, 5, 0.0, 0.0)]
    r = rule("age-aware")
    assert r.pick(queues, 1.0, closing=False, eager=False, answered_at=1.0) is None
    assert r.wait_s(queues, 1.0, answered_at=1.0) == pytest.approx(DELAY)
    assert r.pick(queues, 1.0 + DELAY, closing=False, eager=False, answered_at=1.0) == 0
    full = [QueueView(0, 8, 0.0, 0.0)]
    assert r.pick(full, 1.0, closing=False, eager=False, answered_at=1.0) == 0
    deepest = rule("deepest-first")
    assert deepest.pick(queues, 1.0, closing=False, eager=False, answered_at=1.0) == 0
