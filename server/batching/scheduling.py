"""Which stage queue the batcher's worker runs next (ELF_SCHEDULING); pure functions of the queues.

A queue is *ready* when it holds a full batch, when its head has waited the queue delay, when
nothing shallower is queued that could still feed it (stage k >= 1), when the batcher stops, or
(stage 0) when its rows came to an idle, empty batcher ("eager"). Among the ready queues:

  deepest-first  the deepest one: work already paid for leaves first. The delay counts from when
                 the head entered *this* queue, so a row waits up to one delay at every stage.
  age-aware      the one whose head request arrived first (oldest-first); queues whose heads
                 arrived within one delay of the oldest are a cohort, and of a cohort the one
                 that fills the larger batch runs (ties: the deeper). The delay counts from the
                 request's arrival, so a row that already waited is not held again at the next
                 stage. A stage-0 batch short of full also waits until one delay has passed
                 since answers last went out: clients answered just now are about to send
                 their next images (a closed loop), and those would otherwise miss the batch
                 and wait a whole round. Under a closed loop of c clients this runs "rounds":
                 stage 0 on the newest rows, then their survivors stage by stage, so every
                 answer waits about one round whatever its exit (p99 close to p50), and each
                 stage runs once per round with every row it has (large batches). Under a
                 burst (every row arrived at once) it is "fullest batch first": deep stages
                 wait to fill while stage 0 still has work.

Times are `time.perf_counter()` seconds, passed in (tests drive them by hand).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Policy = Literal["deepest-first", "age-aware"]
POLICIES: tuple[Policy, ...] = ("deepest-first", "age-aware")


@dataclass(frozen=True)
class QueueView:
    """What the rule sees of one non-empty stage queue."""

    stage: int
    rows: int  # rows queued at this stage
    head_enqueued: float  # when the head entered this queue
    head_arrived: float  # when the head's request reached the batcher


@dataclass(frozen=True)
class Scheduler:
    policy: Policy
    max_batch_size: int
    delay_s: float

    def _since(self, q: QueueView) -> float:
        return q.head_arrived if self.policy == "age-aware" else q.head_enqueued

    def ready(
        self,
        q: QueueView,
        shallower_rows: int,
        now: float,
        *,
        closing: bool,
        eager: bool,
        answered_at: float = -math.inf,
    ) -> bool:
        if closing or (q.stage == 0 and eager) or q.rows >= self.max_batch_size:
            return True
        if q.stage == 0 and self.policy == "age-aware" and now - answered_at < self.delay_s:
            return False  # answered clients are about to send more
        return now - self._since(q) >= self.delay_s or (q.stage > 0 and shallower_rows == 0)

    def pick(
        self,
        queues: Sequence[QueueView],
        now: float,
        *,
        closing: bool,
        eager: bool,
        answered_at: float = -math.inf,
    ) -> int | None:
        """The stage to run now, or None (wait); `queues` are the non-empty ones, by stage;
        `answered_at`: when answers last went out."""
        ready = []
        shallower = 0
        for q in sorted(queues, key=lambda q: q.stage):
            if self.ready(q, shallower, now, closing=closing, eager=eager, answered_at=answered_at):
                ready.append(q)
            shallower += q.rows
        if not ready:
            return None
        if self.policy == "deepest-first":
            return ready[-1].stage
        oldest = min(q.head_arrived for q in ready)
        cohort = [q for q in ready if q.head_arrived <= oldest + self.delay_s]
        return max(cohort, key=lambda q: (min(q.rows, self.max_batch_size), q.stage)).stage

    def wait_s(
        self, queues: Sequence[QueueView], now: float, answered_at: float = -math.inf
    ) -> float | None:
        """How long until a queue turns ready by age (None: nothing queued)."""
        if not queues:
            return None
        due = [self._since(q) + self.delay_s for q in queues]
        if self.policy == "age-aware" and queues[0].stage == 0:
            due[0] = max(due[0], answered_at + self.delay_s)
        return max(0.0, min(due) - now)
