"""The batcher under load, in process: scheduling policy, exit mix and batch size.

Three measurements on the server's OnnxStageRunner and Batcher (sessions as the server makes
them; images decoded by the server's preprocessing), variants interleaved in every repetition,
medians over repetitions:

  policy    closed loop: `--concurrency` submitters (asyncio tasks), each sends one image, waits
            for its answer and sends the next, `--requests` in all; per policy (ELF_SCHEDULING):
            p50/p99 latency, throughput, batch sizes per stage. The first 2 x concurrency
            answers are warm-up and not counted in the latencies.
  exit-mix  a threshold sweep from "all final" (early thresholds above 1) to "all at exit 0"
            (threshold 0): every image handed to the batcher at once (max_batch_size 32), per
            policy; against full.onnx at batch 32 x the mix's FLOPs ratio ("ideal") and the
            stage graphs' own times ("ideal by stage times").
  batch     the same burst at the calibrated thresholds for max_batch_size 1..32, with full.onnx
            and the plain stage chain at the same batch size.

    python -m bench.engine_load --models heavy --what policy      # bench/results/engine_*.json
    python -m bench.engine_load --models bundled --what exit-mix batch
    python -m bench.engine_report                                 # engine.md and the plots
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine
from bench.runner import Case, add_model_args, cases, load_case, run_full, run_stages
from server.batching.batcher import Batcher
from server.batching.scheduling import POLICIES, Policy

log = logging.getLogger("bench.engine_load")

SWEEP = (2.0, 0.999, 0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0)  # one threshold at every early exit


def new_batcher(
    case: Case, policy: Policy, b: int, queue: int, *, delay_s: float = 0.002, start: bool = True
) -> Batcher:
    """The server's Batcher on the case's runner; `start=False` leaves it to the caller (to
    instrument it first, as bench.engine_tail does)."""
    batcher = Batcher(
        case.runner,
        max_batch_size=b,
        max_queue_delay_s=delay_s,
        max_queue_size=queue,
        scheduling=policy,
    )
    if start:
        batcher.start()
    return batcher


async def _closed_loop(
    batcher: Batcher, case: Case, thr: np.ndarray, concurrency: int, requests: int
) -> dict[str, Any]:
    lat: list[float] = []
    exits: list[int] = []
    todo = iter(range(requests))

    async def client() -> None:
        for i in todo:  # shared: `requests` in all
            t0 = time.perf_counter()
            (r,) = await batcher.infer([case.x[i % len(case.x)]], [thr], 600.0)
            lat.append(time.perf_counter() - t0)
            exits.append(r.exit_index)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    steady = np.array(lat[2 * concurrency :])
    return {
        "images_per_s": requests / wall,
        "p50_ms": 1e3 * float(np.percentile(steady, 50)),
        "p99_ms": 1e3 * float(np.percentile(steady, 99)),
        "max_ms": 1e3 * float(steady.max()),
        "exit_rates": np.bincount(exits, minlength=case.runner.num_stages) / len(exits),
    }


def batch_sizes(case: Case, run: Any) -> tuple[Any, list[float]]:
    """Mean batch size per stage, from the runner's calls during `run` (a wrapped executor)."""
    sizes: list[list[int]] = [[] for _ in range(case.runner.num_stages)]
    inner = case.runner.run

    def counted(k: int, x: Any) -> Any:
        sizes[k].append(x.shape()[0])
        return inner(k, x)

    case.runner.run = counted  # type: ignore[method-assign]
    try:
        out = run()
    finally:
        del case.runner.run
    return out, [round(float(np.mean(s)), 2) if s else 0.0 for s in sizes]


def measure_policy(
    case: Case, reps: int, concurrency: int, requests: int, policies: list[Policy]
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for rep in range(reps):
        for p in policies[rep % 2 :] + policies[: rep % 2]:
            batcher = new_batcher(case, p, 32, 4 * concurrency)
            try:
                coro = _closed_loop(batcher, case, case.thresholds, concurrency, requests)
                out, sizes = batch_sizes(case, lambda c=coro: case.loop.run_until_complete(c))
            finally:
                batcher.stop(30.0)
            runs[p].append(out | {"batch_per_stage": sizes})
            log.info("%s %s rep %d: %s", case.key, p, rep, {k: out[k] for k in list(out)[:3]})
    rows = [
        {"policy": name, **closed_loop_row(rs, 3)}
        | {"exit_rates": [round(float(v), 4) for v in rs[-1]["exit_rates"]]}
        for name, rs in runs.items()
    ]
    return {"concurrency": concurrency, "requests": requests, "reps": reps, "rows": rows}


def closed_loop_row(rs: list[dict[str, Any]], ndigits: int) -> dict[str, Any]:
    """One variant's closed-loop repetitions: medians of images/s, p50, p99 (rounded to
    `ndigits`), the p99/p50 ratio of the medians and of each repetition, the last batch sizes."""
    med = {k: statistics.median(r[k] for r in rs) for k in ("images_per_s", "p50_ms", "p99_ms")}
    return {
        **{k: round(v, ndigits) for k, v in med.items()},
        "p99_over_p50": round(med["p99_ms"] / med["p50_ms"], 3),
        "p99_over_p50_all": [round(r["p99_ms"] / r["p50_ms"], 3) for r in rs],
        "images_per_s_all": [round(r["images_per_s"], 1) for r in rs],
        "batch_per_stage": rs[-1]["batch_per_stage"],
    }


def write_result(
    res: dict[str, Any], case: Case, facts: dict[str, Any], t0: float, path: Path
) -> None:
    """A measurement's JSON with what made it: model, command, the machine's facts (taken before
    measuring: they hold the load average at the start), wall time since t0."""
    res |= {
        "model": case.key,
        "name": case.manifest.name,
        "images": len(case.x),
        "command": machine.command_line(),
        "machine": facts,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s", path)


def burst(case: Case, policy: Policy, b: int, thr: np.ndarray) -> tuple[float, np.ndarray]:
    """Every image to the batcher at once: (seconds per image, exit index per image)."""
    batcher = new_batcher(case, policy, b, len(case.x) + 1)
    try:
        t0 = time.perf_counter()
        coro = batcher.infer(list(case.x), [thr] * len(case.x), timeout_s=600.0)
        results = case.loop.run_until_complete(coro)
        dt = (time.perf_counter() - t0) / len(case.x)
    finally:
        batcher.stop(30.0)
    return dt, np.array([r.exit_index for r in results])


def sweep_thresholds(case: Case, t: float) -> np.ndarray:
    k = case.runner.num_stages
    return np.array([t] * (k - 1) + [0.0], dtype=np.float64)


def measure_exit_mix(case: Case, reps: int) -> dict[str, Any]:
    times: dict[tuple[str, float], list[float]] = {}
    exits: dict[float, np.ndarray] = {}
    full_s: list[float] = []
    for rep in range(reps):
        t0 = time.perf_counter()
        run_full(case, 32)
        full_s.append((time.perf_counter() - t0) / len(case.x))
        run_stages(case, 32)
        for t in SWEEP:
            for p in POLICIES[rep % 2 :] + POLICIES[: rep % 2]:
                dt, ex = burst(case, p, 32, sweep_thresholds(case, t))
                times.setdefault((p, t), []).append(dt)
                exits[t] = ex
        log.info("%s exit-mix rep %d/%d", case.key, rep + 1, reps)
    return {"reps": reps, "full_ms": 1e3 * statistics.median(full_s)} | mix_rows(case, times, exits)


def mix_rows(
    case: Case, times: dict[tuple[str, float], list[float]], exits: dict[float, np.ndarray]
) -> dict[str, Any]:
    cum = np.array([e.cumulative_flops for e in case.manifest.exits], np.float64)
    cum /= case.manifest.flops_full
    stage_s = np.median(np.stack(case.stage_s[32]), axis=0)  # [K] s per image per stage
    rows = []
    for (p, t), ts in sorted(times.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        ex = exits[t]
        rows.append(
            {
                "policy": p,
                "threshold": t,
                "ms_per_image": round(1e3 * statistics.median(ts), 4),
                "flops_ratio": round(float(cum[ex].mean()), 4),
                "stage_time_ideal_ms": round(1e3 * float(np.cumsum(stage_s)[ex].mean()), 4),
                "exit_rates": [round(float(np.mean(ex == k)), 4) for k in range(len(cum))],
            }
        )
    return {"stage_ms": [round(1e3 * float(s), 4) for s in stage_s], "rows": rows}


def measure_batch(case: Case, reps: int, sizes: list[int]) -> dict[str, Any]:
    times: dict[tuple[str, int], list[float]] = {}
    for rep in range(reps):
        for b in sizes:
            for v in ("full", "stages", *POLICIES):
                t0 = time.perf_counter()
                if v == "full":
                    run_full(case, b)
                elif v == "stages":
                    run_stages(case, b)
                else:
                    burst(case, v, b, case.thresholds)  # type: ignore[arg-type]
                times.setdefault((v, b), []).append((time.perf_counter() - t0) / len(case.x))
        log.info("%s batch rep %d/%d", case.key, rep + 1, reps)
    rows = [
        {"variant": v, "batch": b, "ms_per_image": round(1e3 * statistics.median(ts), 4)}
        for (v, b), ts in times.items()
    ]
    _, ex = burst(case, "deepest-first", 32, case.thresholds)
    cum = np.array([e.cumulative_flops for e in case.manifest.exits]) / case.manifest.flops_full
    return {"reps": reps, "flops_ratio": round(float(cum[ex].mean()), 4), "rows": rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["bundled"], choices=["bundled", "heavy"])
    p.add_argument("--what", nargs="+", default=["policy"], choices=["policy", "exit-mix", "batch"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests", type=int, default=None, help="bundled 4096, heavy 384")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    add_model_args(p)
    args = p.parse_args(argv)
    args.quick, args.stand_in = False, True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    facts = machine.facts()
    for key, model_dir, images, _ in cases(args):
        case = load_case(key, model_dir, images, list(range(1, 33)), [1, 2, 4, 8, 16, 32])
        requests = args.requests or (4096 if key == "bundled" else 384)
        for what in args.what:
            t0 = time.monotonic()
            if what == "policy":
                res = measure_policy(case, args.reps, args.concurrency, requests, args.policies)
            elif what == "exit-mix":
                res = measure_exit_mix(case, args.reps)
            else:
                res = measure_batch(case, args.reps, sorted(args.batch_sizes))
            write_result(res, case, facts, t0, args.out / f"engine_{what}_{key}.json")
        case.loop.close()


if __name__ == "__main__":
    main()
