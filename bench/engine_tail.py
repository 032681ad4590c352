"""Where the latency tail of the batcher comes from under a closed loop, and what moves it.

Runs the server's Batcher on the server's OnnxStageRunner (as bench.engine_load's `policy`
measurement: `--concurrency` submitters, each sends one image, waits for its answer and sends the
next), and records every request's timeline without touching the server's hot path: the
batcher's `_run` is wrapped per instance to log (stage, start, end, the rows in the batch), and
each row is recognised by its own thresholds array (one copy per request). Per request:

  wait 0     from submission to the start of its stage-0 batch
  compute k  its stage-k batch: stacking/merging the input and the stage graph's run
  wait k     from the end of its stage k-1 run to the start of its stage-k batch (k >= 1; the
             exit test of stage k-1 included)
  answer     from the end of its last run until the submitter saw the answer (softmax, exit
             test, resolving the future on the event loop)

Variants (scheduling policy x max_batch_size x queue delay) run interleaved in every
repetition; max_batch_size `auto` is the server's ELF_BATCH_CAP=auto (server/batching/
batch_cap.py), timed afresh before each of its runs as a starting server would (up to 32, within
`--cap-tolerance`); the report sets the p99 request's decomposition against the p50 one, the mean
decomposition of the slowest 2% against the middle 10%, and latency by (the client's previous
exit, this exit): a closed-loop client whose previous answer came early waits for the round it
missed.

    python -m bench.engine_tail --models heavy      # bench/results/engine_tail_heavy.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import machine
from bench.engine_load import closed_loop_row, new_batcher, write_result
from bench.runner import Case, add_model_args, cases, load_case
from server.batching.batch_cap import batch_cap
from server.batching.batcher import Batcher
from server.batching.rows import Part, Row, StageExecutor
from server.batching.scheduling import Policy

log = logging.getLogger("bench.engine_tail")


@dataclass(frozen=True)
class Variant:
    policy: Policy
    max_batch: int | str  # a size, or "auto" (ELF_BATCH_CAP=auto up to 32)
    delay_ms: float = 2.0

    @property
    def name(self) -> str:
        return f"{self.policy} b{self.max_batch} d{self.delay_ms:g}"


def parse_variant(text: str) -> Variant:
    """'age-aware:8', 'age-aware:8:2' (policy:max_batch[:delay_ms]) or 'age-aware:auto'."""
    policy, batch, *delay = text.split(":")
    size = batch if batch == "auto" else int(batch)
    return Variant(policy, size, float(delay[0]) if delay else 2.0)  # type: ignore[arg-type]


def batch_size(case: Case, v: Variant, tolerance: float) -> tuple[int, dict[int, float]]:
    """The variant's cap, and the stage chain's ms per image by batch size that chose it."""
    if v.max_batch != "auto":
        return int(v.max_batch), {}
    pre = case.manifest.preprocessing
    shape = (pre.channels, pre.height, pre.width)
    cap = batch_cap(
        "auto", case.runner, shape, max_batch_size=32, tolerance=tolerance, policy=v.policy
    )
    return cap.size, {b: round(t, 3) for b, t in cap.ms_per_image.items()}


DEFAULT_VARIANTS = ("deepest-first:32", "age-aware:32", "age-aware:16", "age-aware:8")


class _Timed:
    """The batcher's executor, noting when each stage run ends (the worker's thread only)."""

    def __init__(self, inner: StageExecutor) -> None:
        self.inner = inner
        self.num_stages = inner.num_stages
        self.to_device = inner.to_device
        self.merge = inner.merge
        self.ended = 0.0

    def run(self, k: int, x: Any) -> tuple[Any | None, np.ndarray]:
        out = self.inner.run(k, x)
        self.ended = time.perf_counter()
        return out


def _instrument(batcher: Batcher, events: list[tuple[int, float, float, list[int]]]) -> None:
    """Log every batch the worker runs: (stage, start, end of the stage graph's run, id of each
    row's thresholds). The start is before stacking/merging the batch's input."""
    inner = batcher._run
    timed = _Timed(batcher.executor)
    batcher.executor = timed

    def run(k: int, rows: list[Row], parts: list[Part]) -> None:
        ids = [id(r.thresholds) for r in (rows or [r for p in parts for r in p.rows])]
        t0 = time.perf_counter()
        inner(k, rows, parts)
        events.append((k, t0, timed.ended, ids))

    batcher._run = run  # type: ignore[method-assign]


async def _closed_loop(
    batcher: Batcher, case: Case, concurrency: int, requests: int
) -> list[dict[str, Any]]:
    """One record per request: client, submitted, answered, exit, thresholds id."""
    todo = iter(range(requests))
    out: list[dict[str, Any]] = []
    keep: list[np.ndarray] = []  # the thresholds copies stay alive: their ids stay unique

    async def client(c: int) -> None:
        for i in todo:
            thr = case.thresholds.copy()
            keep.append(thr)
            t0 = time.perf_counter()
            (r,) = await batcher.infer([case.x[i % len(case.x)]], [thr], 600.0)
            out.append(
                {"client": c, "t0": t0, "t1": time.perf_counter(), "exit": r.exit_index,
                 "id": id(thr), "seq": i}
            )  # fmt: skip

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return out


def timelines(
    reqs: list[dict[str, Any]], events: list[tuple[int, float, float, list[int]]], stages: int
) -> list[dict[str, Any]]:
    """Each request's waits and computes per stage (ms) and its batch sizes, in request order."""
    by_id: dict[int, list[tuple[int, float, float, int]]] = {}
    for k, t0, t1, ids in events:
        for i in ids:
            by_id.setdefault(i, []).append((k, t0, t1, len(ids)))
    prev_exit: dict[int, int] = {}
    rows = []
    for r in sorted(reqs, key=lambda r: r["t0"]):
        # ids are reused after a request's array dies; keep only the batches of its lifetime
        own = sorted(b for b in by_id.get(r["id"], []) if r["t0"] <= b[1] <= r["t1"])
        wait = [0.0] * stages
        comp = [0.0] * stages
        size = [0] * stages
        last = r["t0"]
        for k, t0, t1, n in own:
            wait[k], comp[k], size[k] = 1e3 * (t0 - last), 1e3 * (t1 - t0), n
            last = t1
        rows.append(
            {"latency": 1e3 * (r["t1"] - r["t0"]), "exit": r["exit"], "wait": wait, "compute": comp,
             "answer": 1e3 * (r["t1"] - last), "batch": size,
             "prev_exit": prev_exit.get(r["client"], -1)}
        )  # fmt: skip
        prev_exit[r["client"]] = r["exit"]
    return rows


def _mean_parts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "latency": round(float(np.mean([r["latency"] for r in rows])), 1),
        "wait": np.mean([r["wait"] for r in rows], axis=0).round(1).tolist(),
        "compute": np.mean([r["compute"] for r in rows], axis=0).round(1).tolist(),
        "answer": round(float(np.mean([r["answer"] for r in rows])), 2),
        "exit_mix": np.bincount([r["exit"] for r in rows], minlength=len(rows[0]["wait"]))
        .round(0)
        .tolist(),
    }


def decompose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 and p99 requests, slowest 2% vs middle 10%, latency by (previous exit, exit)."""
    srt = sorted(rows, key=lambda r: r["latency"])
    n = len(srt)

    def at(q: float) -> dict[str, Any]:
        r = srt[min(n - 1, round(q * (n - 1)))]
        return {k: (np.round(v, 1).tolist() if k != "batch" else v) for k, v in r.items()}

    pairs: dict[str, list[float]] = {}
    for r in rows:
        if r["prev_exit"] >= 0:
            pairs.setdefault(f"{r['prev_exit']}->{r['exit']}", []).append(r["latency"])
    return {
        "p50_request": at(0.50),
        "p99_request": at(0.99),
        "middle_10pct": _mean_parts(srt[int(0.45 * n) : int(0.55 * n)]),
        "slowest_2pct": _mean_parts(srt[int(0.98 * n) :]),
        "by_prev_exit": {
            k: {"n": len(v), "median_ms": round(statistics.median(v), 1)}
            for k, v in sorted(pairs.items())
        },
    }


def run_variant(
    case: Case, v: Variant, concurrency: int, requests: int, tolerance: float = 0.05
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    b, cap_ms = batch_size(case, v, tolerance)
    batcher = new_batcher(case, v.policy, b, 4 * concurrency, delay_s=v.delay_ms / 1e3, start=False)
    events: list[tuple[int, float, float, list[int]]] = []
    _instrument(batcher, events)
    batcher.start()
    try:
        t0 = time.perf_counter()
        reqs = case.loop.run_until_complete(_closed_loop(batcher, case, concurrency, requests))
        wall = time.perf_counter() - t0
    finally:
        batcher.stop(30.0)
    rows = timelines(reqs, events, case.runner.num_stages)[2 * concurrency :]  # warm-up out
    lat = np.array([r["latency"] for r in rows])
    sizes = [[len(ids) for k, _, _, ids in events if k == s] for s in range(case.runner.num_stages)]
    per_image = [
        [1e3 * (t1 - t0) / len(ids) for k, t0, t1, ids in events if k == s]
        for s in range(case.runner.num_stages)
    ]  # the machine's noise: the same stage's ms per image from batch to batch
    summary = {
        "batch_cap": b,
        "cap_ms_per_image": cap_ms,
        "images_per_s": requests / wall,
        "stage_ms_per_image_p10_p50_p90": [
            np.percentile(m, [10, 50, 90]).round(1).tolist() if m else [] for m in per_image
        ],
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "batch_per_stage": [round(float(np.mean(s)), 2) if s else 0.0 for s in sizes],
    }
    return summary, rows


def measure(
    case: Case,
    variants: list[Variant],
    reps: int,
    concurrency: int,
    requests: int,
    *,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    detail: dict[str, list[dict[str, Any]]] = {}
    for rep in range(reps):
        order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
        for v in order:
            summary, rows = run_variant(case, v, concurrency, requests, tolerance)
            runs[v.name].append(summary)
            detail.setdefault(v.name, []).extend(rows)  # pooled over repetitions
            log.info(
                "%s rep %d: %.1f images/s, p50 %.0f ms, p99 %.0f ms",
                v.name, rep, summary["images_per_s"], summary["p50_ms"], summary["p99_ms"],
            )  # fmt: skip
    out = [
        {"variant": name, **closed_loop_row(rs, 2)}
        | {
            "stage_ms_per_image": [r["stage_ms_per_image_p10_p50_p90"] for r in rs],
            "batch_cap_all": [r["batch_cap"] for r in rs],
            "cap_ms_per_image_all": [r["cap_ms_per_image"] for r in rs],
            "decomposition": decompose(detail[name]),
        }
        for name, rs in runs.items()
    ]
    return {"concurrency": concurrency, "requests": requests, "reps": reps, "rows": out}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["heavy"], choices=["bundled", "heavy"])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests", type=int, default=None, help="bundled 4096, heavy 384")
    p.add_argument("--cap-tolerance", type=float, default=0.05, help="for max_batch 'auto'")
    p.add_argument("--name", default="engine_tail", help="result file: OUT/NAME_MODEL.json")
    add_model_args(p)
    args = p.parse_args(argv)
    args.quick, args.stand_in = False, True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    facts = machine.facts()
    variants = [parse_variant(v) for v in args.variants]
    for key, model_dir, images, _ in cases(args):
        case = load_case(key, model_dir, images, [1, 4, 8, 16, 32], [32])
        requests = args.requests or (4096 if key == "bundled" else 384)
        t0 = time.monotonic()
        res = measure(
            case, variants, args.reps, args.concurrency, requests, tolerance=args.cap_tolerance
        )
        res["cap_tolerance"] = args.cap_tolerance
        write_result(res, case, facts, t0, args.out / f"{args.name}_{key}.json")
        case.loop.close()


if __name__ == "__main__":
    main()
