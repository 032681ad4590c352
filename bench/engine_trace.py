"""Where a batcher burst's time goes above "ideal by stage times": a per-stage trace.

The server's Batcher runs on a wrapper of its StageExecutor (the protocol it is built on; no
server code changes) that records every call on the worker thread: kind (upload, run, merge),
stage, rows, start and end. Per burst (every image submitted at once, max_batch_size b), with
each stage graph also timed alone at the batch sizes the burst ran and at b:

  ideal           each row at its stages' batch-b time per row (the runner's ideal by stage times)
  partial batches stage calls with fewer than b rows, at their own size's time alone, minus the
                  same rows at batch b's time per row
  slower in burst the stage calls' measured time minus the same calls alone
  merges, upload  the survivors' compaction and the stage-0 input's upload
  gaps            the worker's time between executor calls (softmax and exits, bookkeeping,
                  answers, scheduling, waiting), before the first call and after the last
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.engine import Case

Call = tuple[str, int, int, float, float]  # kind, stage, rows, start, end (perf_counter)


class TracingExecutor:
    """The batcher's StageExecutor with every call recorded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.num_stages = inner.num_stages
        self.calls: list[Call] = []

    def to_device(self, x: np.ndarray) -> Any:
        t0 = time.perf_counter()
        out = self.inner.to_device(x)
        self.calls.append(("upload", 0, len(x), t0, time.perf_counter()))
        return out

    def run(self, k: int, x: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner.run(k, x)
        self.calls.append(("run", k, int(x.shape()[0]), t0, time.perf_counter()))
        return out

    def merge(self, parts: Sequence[tuple[Any, np.ndarray]]) -> Any:
        t0 = time.perf_counter()
        out = self.inner.merge(parts)
        rows = sum(int(r.size) for _, r in parts)
        self.calls.append(("merge", -1, rows, t0, time.perf_counter()))
        return out


def stage_alone(case: Case, sizes: Sequence[int], calls: int = 3) -> dict[int, list[float]]:
    """{rows: [median seconds of one call of stage k on that many rows]}."""
    out = {}
    for b in sorted(set(sizes)):
        h = case.runner.to_device(case.x[:b])
        per_stage = []
        for k in range(case.runner.num_stages):
            spent, nxt = [], None
            for _ in range(calls):
                t0 = time.perf_counter()
                nxt, _ = case.runner.run(k, h)
                spent.append(time.perf_counter() - t0)
            per_stage.append(statistics.median(spent))
            h = nxt
        out[b] = per_stage
    return out


def burst(case: Case, b: int, variant: str) -> tuple[float, float, list[Call], np.ndarray]:
    # engine imports this module lazily
    from bench.engine import POLICY, batcher_runner, run_batcher  # noqa: PLC0415

    tracer = TracingExecutor(batcher_runner(case, variant))
    t0 = time.perf_counter()
    _, exits = run_batcher(case, b, POLICY[variant], tracer)
    return t0, time.perf_counter(), tracer.calls, exits


def decompose(
    t0: float, t1: float, calls: list[Call], alone: dict[int, list[float]], b: int
) -> dict[str, Any]:
    """One burst: ms per image by part (module docstring), per-stage rows and call times, gaps."""
    runs = [c for c in calls if c[0] == "run"]
    n = sum(rows for _, k, rows, _, _ in runs if k == 0)
    per_row = [alone[b][k] / b for k in range(len(alone[b]))]
    at_size = {(k, rows): alone[rows][k] for _, k, rows, _, _ in runs}
    parts = {
        "burst": t1 - t0,
        "ideal": sum(rows * per_row[k] for _, k, rows, _, _ in runs),
        "partial_batches": sum(at_size[k, r] - r * per_row[k] for _, k, r, _, _ in runs),
        "slower_in_burst": sum(e - s - at_size[k, r] for _, k, r, s, e in runs),
        "merges": sum(e - s for kind, _, _, s, e in calls if kind == "merge"),
        "upload": sum(e - s for kind, _, _, s, e in calls if kind == "upload"),
    }
    gaps = [nxt[3] - prev[4] for prev, nxt in itertools.pairwise(calls)]
    parts["gaps_between_calls"] = sum(gaps)
    parts["before_first_call"] = calls[0][3] - t0
    parts["after_last_call"] = t1 - calls[-1][4]
    stages = []
    for k in range(len(per_row)):
        mine = [(r, e - s) for _, kk, r, s, e in runs if kk == k]
        if not mine:  # every image left before this stage
            continue
        rows = [r for r, _ in mine]
        stages.append({
            "stage": k, "calls": len(mine), "rows_mean": round(float(np.mean(rows)), 2),
            "rows_min": min(rows), "rows_max": max(rows),
            "ms_per_call": round(1e3 * statistics.median(s for _, s in mine), 3),
            "batch_b_ms_per_call": round(1e3 * alone[b][k], 3),
            # this stage's time in the burst over the same rows at batch b's time per row
            "vs_batch_b_per_row": round(sum(s for _, s in mine) / (sum(rows) * per_row[k]), 4),
        })  # fmt: skip
    return {
        "images": n,
        "ms_per_image": {k: round(1e3 * v / n, 4) for k, v in parts.items()},
        "stages": stages,
        "gaps_ms": {
            "count": len(gaps),
            "median": round(1e3 * statistics.median(gaps), 4),
            "max": round(1e3 * max(gaps), 4),
        },
    }


def trace(case: Case, b: int, bursts: int) -> dict[str, Any]:
    """Per batcher variant: `bursts` traced bursts at max_batch_size b, interleaved; each stage
    timed alone before every round at the batch sizes any burst ran."""
    from bench.engine import POLICY  # noqa: PLC0415

    out: dict[str, list[dict[str, Any]]] = {v: [] for v in POLICY}
    for _ in range(bursts):
        traced = {v: burst(case, b, v) for v in POLICY}
        sizes = {r for *_, calls, _ in traced.values() for kind, _, r, _, _ in calls
                 if kind == "run"} | {b}  # fmt: skip
        alone = stage_alone(case, sorted(sizes))
        for v, (t0, t1, calls, _) in traced.items():
            out[v].append(decompose(t0, t1, calls, alone, b))
    return {"batch": b, "bursts": bursts, "policies": {v: summary(r) for v, r in out.items()}}


def summary(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over bursts of each part; the stages and gaps of the median burst."""
    keys = bursts[0]["ms_per_image"]
    med = {k: round(statistics.median(x["ms_per_image"][k] for x in bursts), 4) for k in keys}
    mid = sorted(bursts, key=lambda x: x["ms_per_image"]["burst"])[len(bursts) // 2]
    return {"ms_per_image": med, "stages": mid["stages"], "gaps_ms": mid["gaps_ms"],
            "all": [x["ms_per_image"] for x in bursts]}  # fmt: skip
