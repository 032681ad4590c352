"""Where the batcher's time goes above "ideal by stage times" in a burst (bench/runner.py's
`batcher-age` at batch 32), and what one stage call costs at each batch size.

Per model, on the runner's images and sessions, interleaved for `--reps` repetitions:

  stage model   every stage graph alone (OnnxStageRunner.run on a bound input) at batch sizes
                1, 2, 4, 8, 12, ..., B: median seconds per call t_k(b) (linear in between), and the
                fit t_k(b) = a_k + b c_k (a_k: the fixed cost of one call, ONNX Runtime's and the
                binding's)
  burst         the server's Batcher (ELF_SCHEDULING=age-aware, max_batch_size B, 2 ms delay)
                fed every image at once, its executor wrapped to time each call: stage runs
                (k, b), merges, the upload; the rest of the wall time is the batcher's own work
                (scheduling, bookkeeping, softmax and exits, answers) and the event loop's

The report splits the burst's ms/image into: ideal by stage times at batch B (the runner's
definition), + partial batches (t_k at the sizes the burst ran minus the same rows at batch B's
per-row time), + the stage graphs running slower inside the burst than alone (colder caches:
a stage's weights and inputs were evicted by the other stages' runs), + merges, + upload, + the
rest: inside the batcher's per-batch method (stacking, exits, bookkeeping, answers), before the
first batch (rows and the request), between batches (scheduling), after the last.

    python -m bench.engine_overhead --models bundled --reps 5
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.runner import Case, add_model_args, cases, load_case
from server.batching.batcher import Batcher

log = logging.getLogger("bench.engine_overhead")


class TimedExecutor:
    """The batcher's StageExecutor with every call timed: (kind, stage, rows, seconds)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.num_stages = inner.num_stages
        self.calls: list[tuple[str, int, int, float]] = []

    def to_device(self, x: np.ndarray) -> Any:
        t0 = time.perf_counter()
        out = self.inner.to_device(x)
        self.calls.append(("upload", 0, len(x), time.perf_counter() - t0))
        return out

    def run(self, k: int, x: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner.run(k, x)
        self.calls.append(("run", k, int(x.shape()[0]), time.perf_counter() - t0))
        return out

    def merge(self, parts: Sequence[tuple[Any, np.ndarray]]) -> Any:
        t0 = time.perf_counter()
        out = self.inner.merge(parts)
        rows = sum(int(r.size) for _, r in parts)
        self.calls.append(("merge", -1, rows, time.perf_counter() - t0))
        return out


def stage_call_times(case: Case, sizes: Sequence[int], calls: int) -> dict[int, list[float]]:
    """{b: [median seconds of one call of stage k at batch b]}: each stage alone on its input."""
    out = {}
    for b in sizes:
        h = case.runner.to_device(case.x[:b])
        per_stage = []
        for k in range(case.runner.num_stages):
            spent = []
            nxt = None
            for _ in range(calls):
                t0 = time.perf_counter()
                nxt, _ = case.runner.run(k, h)
                spent.append(time.perf_counter() - t0)
            per_stage.append(statistics.median(spent))
            h = nxt
        out[b] = per_stage
    return out


def burst(case: Case, b: int) -> tuple[float, list[tuple[str, int, int, float]], np.ndarray]:
    timed = TimedExecutor(case.runner)
    batcher = Batcher(
        timed,
        max_batch_size=b,
        max_queue_delay_s=0.002,
        max_queue_size=len(case.x) + 1,
        scheduling="age-aware",
    )
    inner_run = batcher._run
    spans: list[tuple[float, float]] = []

    def run(*args: Any) -> None:  # the batcher's per-batch method, timed (start, end)
        s0 = time.perf_counter()
        inner_run(*args)
        spans.append((s0, time.perf_counter()))

    batcher._run = run  # type: ignore[method-assign,assignment]
    t0 = time.perf_counter()
    batcher.start()
    try:
        thr = [case.thresholds] * len(case.x)
        results = case.loop.run_until_complete(batcher.infer(list(case.x), thr, 600.0))
    finally:
        batcher.stop(10.0)
    wall = time.perf_counter() - t0
    in_run = sum(e - s for s, e in spans)
    timed.calls.append(("in_run", 0, 0, in_run))
    timed.calls.append(("before_first", 0, 0, spans[0][0] - t0))
    timed.calls.append(("after_last", 0, 0, t0 + wall - spans[-1][1]))
    return wall, timed.calls, np.array([r.exit_index for r in results])


def decompose(
    wall: float, calls: list[tuple[str, int, int, float]], exits: np.ndarray, model: dict
) -> dict[str, float]:
    """Seconds per image of the burst, split (see the module docstring)."""
    n = exits.size
    t = {int(b): v for b, v in model.items()}
    big = max(t)
    per_row = [t[big][k] / big for k in range(len(t[big]))]
    sizes = sorted(t)

    def at(k: int, rows: int) -> float:  # t_k(rows), linear between the measured sizes
        return float(np.interp(rows, sizes, [t[b][k] for b in sizes]))

    cum = np.cumsum(per_row)
    ideal = float(cum[exits].sum())
    runs = [(k, rows, s) for kind, k, rows, s in calls if kind == "run"]
    at_sizes = sum(at(k, rows) for k, rows, _ in runs)
    at_big = sum(rows * per_row[k] for k, rows, _ in runs)
    measured = sum(s for _, _, s in runs)
    merge = sum(s for kind, _, _, s in calls if kind == "merge")
    upload = sum(s for kind, _, _, s in calls if kind == "upload")
    rest = wall - measured - merge - upload
    spans = {kind: s for kind, _, _, s in calls if kind in ("in_run", "before_first", "after_last")}
    parts = {
        "burst": wall,
        "ideal_by_stage_times": ideal,
        "partial_batches": at_sizes - at_big,
        "stage_slower_in_burst": measured - at_sizes,
        "merge": merge,
        "upload": upload,
        "rest": rest,
        "rest_in_run": spans["in_run"] - measured - merge - upload,
        "rest_before_first_batch": spans["before_first"],
        "rest_after_last_batch": spans["after_last"],
        "rest_between_batches": wall - sum(spans.values()),
        # at_big and ideal differ only by rounding (the same rows at the same per-row times)
        "check_rows_at_big_minus_ideal": at_big - ideal,
    }
    return {k: 1e3 * v / n for k, v in parts.items()}


def fit(model: dict[int, list[float]]) -> list[dict[str, float]]:
    """Least squares t_k(b) = a_k + b c_k over the measured sizes, per stage (ms)."""
    bs = np.array(sorted(model), dtype=np.float64)
    out = []
    for k in range(len(model[int(bs[0])])):
        ys = np.array([model[int(b)][k] for b in bs]) * 1e3
        c, a = np.polyfit(bs, ys, 1)
        out.append({"fixed_ms": round(float(a), 4), "per_row_ms": round(float(c), 4)})
    return out


def measure(case: Case, b: int, reps: int, calls: int) -> dict[str, Any]:
    sizes = sorted({1, 2, 4, 8, 12, 16, 20, 24, 28, b})
    models, bursts = [], []
    for rep in range(-1, reps):  # repetition -1 warms up
        model = stage_call_times(case, sizes, calls)
        wall, trace, exits = burst(case, b)
        if rep >= 0:
            models.append(model)
            bursts.append(decompose(wall, trace, exits, model))
            log.info("%s: repetition %d/%d", case.key, rep + 1, reps)
    med_model = {s: np.median([m[s] for m in models], axis=0).tolist() for s in sizes}
    keys = bursts[0].keys()
    med = {k: round(statistics.median(r[k] for r in bursts), 4) for k in keys}
    return {
        "model": case.key,
        "batch": b,
        "images": len(case.x),
        "burst_ms_per_image": med,
        "burst_all": bursts,
        "ratio_to_ideal": round(med["burst"] / med["ideal_by_stage_times"], 4),
        "stage_ms_per_call": {s: [round(1e3 * v, 4) for v in med_model[s]] for s in sizes},
        "stage_fit": fit(med_model),
        "batch_sizes_run": sorted({rows for kind, _, rows, _ in trace if kind == "run"}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["bundled"], choices=["bundled", "heavy"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="calls per stage and batch size")
    p.add_argument("--stand-in", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps-heavy", type=int, default=None)
    add_model_args(p)
    args = p.parse_args(argv)
    args.batch_sizes = [args.batch]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = []
    for key, model_dir, images, _ in cases(args):
        case = load_case(key, model_dir, images, list(range(1, args.batch + 1)), [args.batch])
        reps = args.reps_heavy if key == "heavy" and args.reps_heavy else args.reps
        results.append(measure(case, args.batch, reps, args.calls))
        case.loop.close()
    result = {"command": " ".join(["python -m bench.engine_overhead", *sys.argv[1:]])}
    result["models"] = results  # type: ignore[assignment]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "engine_overhead.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s: %s", path, json.dumps([r["burst_ms_per_image"] for r in results]))


if __name__ == "__main__":
    main()
