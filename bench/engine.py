"""In-process benchmark of the early-exit engine against full.onnx, per image.

Variants, all on the same decoded images, with the same ONNX Runtime session options (the
server's: intra-op threads = CPUs, no spinning), interleaved round-robin in every repetition
(the order rotates between repetitions):

  full         full.onnx, one sess.run per batch (what a plain deployment runs)
  stages       the stage graphs chained with the server's OnnxStageRunner, no early exit
               (the price of splitting the network)
  early-exit   the same runner, rows that exit are dropped after each stage (per batch)
  batcher      the server's Batcher (max_batch_size = b, 2 ms queue delay) fed every image at
               once, ELF_SCHEDULING=deepest-first
  batcher-age  the same with ELF_SCHEDULING=age-aware (the server's default)
  batcher-fresh  `batcher` on a runner that writes every merged batch into fresh memory
               (merge_buffers=0; every other variant's runner reuses its merge buffers)

Each variant's time is also divided by full's in the same repetition (the machine's speed drifts
by several percent over minutes, and every variant with it; the pairing cancels that).
Repetitions continue until the median of every such time / full is known to within --precision
(half the width of a distribution-free 95% confidence interval of the median, over the median),
between --min-reps and --max-reps and within --max-seconds per model; each variant reports min /
median / max ms per image and the precision of both medians. Ideal = full x the FLOPs ratio of
the exit mix measured; ideal by stage times = the exit mix at each stage graph's time in `stages`
(a zero-overhead engine on these graphs).

--twice runs the same command twice, each in a fresh process, back to back, and records whether
the two runs' ratios (time / full, and vs ideal by stage times) agree within --agreement; the
spread of the absolute medians is recorded as well. --trace adds, per batcher variant, a per-stage
trace of bursts at the largest batch size (bench/engine_trace.py).

    python -m bench engine --models heavy --batch-sizes 32 --twice --trace
    python -m bench engine --quick --stand-in           # smoke test into runs/bench-quick/
    python -m bench engine report                        # the page, from bench/results/engine.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import machine, pages
from bench.images import ImageSet, write_image_set
from elf_core.exits import softmax
from elf_core.manifest import Manifest, load_manifest
from server.batching.batcher import Batcher
from server.batching.rows import StageExecutor
from server.batching.scheduling import Policy
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions, session_options
from server.preprocess import decode_image
from server.settings import Settings

log = logging.getLogger("bench.engine")

VARIANTS = ("full", "stages", "early-exit", "batcher", "batcher-age", "batcher-fresh")
POLICY: dict[str, Policy] = {
    "batcher": "deepest-first",
    "batcher-age": "age-aware",
    "batcher-fresh": "deepest-first",
}
FRESH = frozenset({"batcher-fresh"})  # batcher variants on the runner without merge buffers
RESULT = Path("bench/results/engine.json")
Outcome = tuple[np.ndarray, np.ndarray]  # (predicted class [N], exit index [N])


@dataclass
class Case:
    key: str
    model_dir: Path
    manifest: Manifest
    runner: OnnxStageRunner
    fresh_runner: OnnxStageRunner  # the same sessions, merge_buffers=0
    full: ort.InferenceSession
    x: np.ndarray  # float32 [N, C, H, W], decoded by the server's preprocessing
    y: np.ndarray  # labels [N]
    thresholds: np.ndarray  # float64 [K], the manifest's (the last is 0)
    loop: asyncio.AbstractEventLoop
    # batch size -> one [K] array per `stages` run: seconds per image spent in each stage graph
    stage_s: dict[int, list[np.ndarray]] = field(default_factory=dict)
    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)  # the last run's


def load_case(
    key: str, model_dir: Path, images: ImageSet, warm_sizes: list[int], sizes: list[int]
) -> Case:
    """Sessions as the server makes them; stages warmed at warm_sizes (later stages see any
    size), full.onnx at the measured sizes."""
    manifest = load_manifest(model_dir)
    settings = Settings(model_dir=model_dir, providers="cpu")
    runner = OnnxStageRunner(manifest, load_stage_sessions(manifest, model_dir, settings))
    fresh_runner = OnnxStageRunner(manifest, runner.stages, merge_buffers=0)
    assert manifest.full_model is not None, f"{model_dir}: no full.onnx in the manifest"
    opts = session_options(settings.threads_per_session(), settings.ort_spinning)
    full = ort.InferenceSession(
        str(model_dir / manifest.full_model.file),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
    )
    pre = manifest.preprocessing
    x = np.stack([decode_image(b, pre, settings.max_image_pixels) for b in images.read()])
    t0 = time.perf_counter()
    runner.warm_up(warm_sizes)
    for b in sizes:
        full.run(None, {"input": x[:b]})
    log.info("%s: %d images, warmed in %.1f s", key, len(x), time.perf_counter() - t0)
    thresholds = np.asarray(manifest.thresholds, dtype=np.float64)
    return Case(
        key, model_dir, manifest, runner, fresh_runner, full, x, np.asarray(images.labels),
        thresholds, asyncio.new_event_loop(),
    )  # fmt: skip


def chunks(case: Case, b: int) -> list[np.ndarray]:
    return [case.x[i : i + b] for i in range(0, len(case.x), b)]


def run_full(case: Case, b: int) -> Outcome:
    last = case.full.get_outputs()[-1].name
    preds = [case.full.run([last], {"input": c})[0].argmax(1) for c in chunks(case, b)]
    k = case.manifest.num_exits - 1
    return np.concatenate(preds), np.full(len(case.x), k)


def run_stages(case: Case, b: int) -> Outcome:
    """Every stage on every row; also times each stage graph (its share of the run time)."""
    preds = []
    spent = np.zeros(case.runner.num_stages)
    for c in chunks(case, b):
        h: ort.OrtValue | None = case.runner.to_device(c)
        for k in range(case.runner.num_stages):
            assert h is not None
            t0 = time.perf_counter()
            h, logits = case.runner.run(k, h)
            spent[k] += time.perf_counter() - t0
        preds.append(logits.argmax(1))
    case.stage_s.setdefault(b, []).append(spent / len(case.x))
    k_last = case.manifest.num_exits - 1
    return np.concatenate(preds), np.full(len(case.x), k_last)


def run_early_exit(case: Case, b: int) -> Outcome:
    """Per batch: run stage k on the survivors, answer the confident rows, compact the rest."""
    n, last = len(case.x), case.runner.num_stages - 1
    pred, exit_idx = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for start in range(0, n, b):
        rows = np.arange(start, min(start + b, n))
        h = case.runner.to_device(case.x[rows])
        for k in range(last + 1):
            features, logits = case.runner.run(k, h)
            probs = softmax(logits)
            done = np.ones(len(rows), bool) if k == last else probs.max(1) >= case.thresholds[k]
            pred[rows[done]], exit_idx[rows[done]] = probs[done].argmax(1), k
            keep = np.flatnonzero(~done)
            if keep.size == 0:
                break
            h = case.runner.merge([(features, keep.astype(np.int64))])
            rows = rows[keep]
    return pred, exit_idx


def batcher_runner(case: Case, variant: str) -> OnnxStageRunner:
    return case.fresh_runner if variant in FRESH else case.runner


def run_batcher(
    case: Case, b: int, policy: Policy, executor: StageExecutor | None = None
) -> Outcome:
    """The server's Batcher fed every image at once; `executor` wraps a runner (a trace, or
    the runner without merge buffers)."""
    batcher = Batcher(
        executor or case.runner,
        max_batch_size=b,
        max_queue_delay_s=0.002,
        max_queue_size=len(case.x) + 1,
        scheduling=policy,
    )
    batcher.start()
    try:
        thr = [case.thresholds] * len(case.x)
        coro = batcher.infer(list(case.x), thr, timeout_s=600.0)
        results = case.loop.run_until_complete(coro)
    finally:
        batcher.stop(10.0)
    pred = np.array([int(r.probs.argmax()) for r in results])
    return pred, np.array([r.exit_index for r in results])


def batcher_variant(variant: str) -> Callable[[Case, int], Outcome]:
    return lambda case, b: run_batcher(case, b, POLICY[variant], batcher_runner(case, variant))


RUNS: dict[str, Callable[[Case, int], Outcome]] = {
    "full": run_full,
    "stages": run_stages,
    "early-exit": run_early_exit,
} | {v: batcher_variant(v) for v in POLICY}


def median_ci(xs: list[float]) -> tuple[float, float]:
    """A distribution-free confidence interval of the median, at least 95% where the sample
    allows it: the order statistics l and n+1-l with P(Binomial(n, 1/2) < l) <= 2.5% (with
    fewer than 6 values nothing narrower than [min, max] has that coverage)."""
    s, n = sorted(xs), len(xs)
    low = 1
    while low < n // 2 and sum(math.comb(n, i) for i in range(low + 1)) / 2**n <= 0.025:
        low += 1
    return s[low - 1], s[n - low]


def precision(xs: list[float]) -> float:
    """Half the median's confidence interval over the median (0.02 = known to within 2%)."""
    lo, hi = median_ci(xs)
    return (hi - lo) / 2 / statistics.median(xs)


def one_round(case: Case, sizes: list[int], rep: int) -> dict[tuple[str, int], float]:
    """Every variant once per batch size, in an order that rotates with the repetition."""
    out: dict[tuple[str, int], float] = {}
    for b in sizes:
        shift = (rep + b) % len(VARIANTS)
        for v in VARIANTS[shift:] + VARIANTS[:shift]:
            t0 = time.perf_counter()
            case.outcomes[(v, b)] = RUNS[v](case, b)
            out[(v, b)] = (time.perf_counter() - t0) / len(case.x)
    return out


def measure(case: Case, sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Repetitions until the median of every variant's time / full (paired within each
    repetition, so that the machine's drift cancels) is within args.precision, or a cap."""
    times: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    if args.warm_rep:
        one_round(case, sizes, -1)
        case.stage_s.clear()
    t0, reps = time.monotonic(), 0
    while True:
        this_round = one_round(case, sizes, reps)
        for (v, b), t in this_round.items():
            times.setdefault((v, b), []).append(t)
            ratios.setdefault((v, b), []).append(t / this_round[("full", b)])
        reps += 1
        paired = [precision(r) for (v, _), r in ratios.items() if v != "full"]
        worst = max(paired) if reps > 1 else math.inf
        log.info("%s: repetition %d, worst precision of time / full %.1f%%",
                 case.key, reps, 100 * worst)  # fmt: skip
        if reps >= args.min_reps and worst <= args.precision:
            break
        if reps >= args.max_reps or time.monotonic() - t0 > args.max_seconds:
            say = log.warning if args.max_reps > 1 else log.debug
            say("%s: stopped at %d repetitions, %.1f%% > target", case.key, reps, 100 * worst)
            break
    return summarise(case, sizes, times, ratios) | {
        "reps": reps, "target_precision": args.precision}  # fmt: skip


def summarise(
    case: Case,
    sizes: list[int],
    times: dict[tuple[str, int], list[float]],
    ratios: dict[tuple[str, int], list[float]],
) -> dict[str, Any]:
    m = case.manifest
    cum = np.array([e.cumulative_flops for e in m.exits], dtype=np.float64)
    rows, stage_ms = [], {}
    for b in sizes:
        per_stage = np.median(np.stack(case.stage_s[b]), axis=0)  # seconds per image
        stage_ms[b] = [round(1e3 * float(v), 4) for v in per_stage]
        cum_s = np.cumsum(per_stage)
        for v in VARIANTS:
            pred, exits = case.outcomes[(v, b)]
            ts = times[(v, b)]
            t, (lo, hi) = statistics.median(ts), median_ci(ts)
            vs_full = statistics.median(ratios[(v, b)])
            flops_ratio = float(cum[exits].mean() / m.flops_full)
            by_stages = float(cum_s[exits].mean())
            rows.append({
                "variant": v, "batch": b, "reps": len(ts),
                "ms_per_image": round(1e3 * t, 4),
                "ms_per_image_min": round(1e3 * min(ts), 4),
                "ms_per_image_max": round(1e3 * max(ts), 4),
                "median_ci_ms": [round(1e3 * lo, 4), round(1e3 * hi, 4)],
                "median_precision": round(precision(ts), 4) if len(ts) > 1 else None,
                "ms_per_image_all": [round(1e3 * s, 4) for s in ts],
                "images_per_s": round(1 / t, 1),
                "time_vs_full": round(vs_full, 4),
                "time_vs_full_precision": round(precision(ratios[(v, b)]), 4)
                if len(ts) > 1 and v != "full" else None,
                "flops_ratio": round(flops_ratio, 4),
                "ideal_ms_per_image": round(1e3 * t / vs_full * flops_ratio, 4),
                "stage_time_ideal_ms_per_image": round(1e3 * by_stages, 4),
                "vs_stage_time_ideal": round(t / by_stages, 4),
                "saving_efficiency": efficiency(vs_full, flops_ratio),
                "exit_rates": [round(float(np.mean(exits == k)), 4) for k in range(len(cum))],
                "accuracy": round(float(np.mean(pred == case.y)), 4),
            })  # fmt: skip
    return {
        "model": case.key,
        "name": m.name,
        "architecture": m.provenance.architecture,
        "input": [m.preprocessing.channels, m.preprocessing.height, m.preprocessing.width],
        "images": len(case.x),
        "flops_full": m.flops_full,
        "thresholds": [round(t, 6) for t in m.thresholds],
        "cumulative_flops_ratio": [round(c / m.flops_full, 4) for c in cum.tolist()],
        "stage_ms_per_image": stage_ms,
        "rows": rows,
    }


def efficiency(time_ratio: float, flops_ratio: float) -> float | None:
    """Realised saving / FLOPs saving (1.0 = as good as the FLOPs promise)."""
    if flops_ratio >= 1.0:
        return None
    return round((1 - time_ratio) / (1 - flops_ratio), 4)


JUDGED = ("time_vs_full", "vs_stage_time_ideal")  # the claims; ms per image follows the machine


def agreement(runs: list[dict[str, Any]], limit: float) -> dict[str, Any]:
    """Spread between two runs per (model, batch, variant): |a - b| / mean(a, b), of the median
    ms per image (shown) and of the ratios the benchmark claims (judged against `limit`)."""

    def index(run: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, Any]]:
        return {(m["model"], r["batch"], r["variant"]): r for m in run["models"] for r in m["rows"]}

    a, b = index(runs[0]), index(runs[1])
    rows: list[dict[str, Any]] = []
    for key in a.keys() & b.keys():
        spread = {f: abs(a[key][f] - b[key][f]) / ((a[key][f] + b[key][f]) / 2)
                  for f in ("ms_per_image", *JUDGED)}  # fmt: skip
        rows.append({"model": key[0], "batch": key[1], "variant": key[2]}
                    | {f"spread_{f}": round(v, 4) for f, v in spread.items()})  # fmt: skip
    worst = max(r[f"spread_{f}"] for r in rows for f in JUDGED)
    return {"limit": limit, "max_spread": round(worst, 4), "agree": worst <= limit,
            "rows": sorted(rows, key=lambda r: (r["model"], r["batch"], r["variant"]))}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="few images, 1 repetition: a smoke test")
    p.add_argument(
        "--models", nargs="+", default=["bundled", "heavy"], choices=["bundled", "heavy"]
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--images", type=int, default=None, help="images (bundled 512, heavy 64)")
    p.add_argument("--precision", type=float, default=0.02, help="median known to within this")
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--max-reps", type=int, default=100)
    p.add_argument("--max-seconds", type=float, default=900.0, help="per model")
    p.add_argument("--twice", action="store_true", help="two runs back to back, compared")
    p.add_argument("--agreement", type=float, default=0.05, help="--twice: allowed spread")
    p.add_argument("--trace", action="store_true", help="per-stage trace of batcher bursts")
    p.add_argument("--trace-bursts", type=int, default=3, help="bursts per batcher variant")
    p.add_argument("--stand-in", action="store_true", help="resnet32 stand-in if no model-dir")
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    p.add_argument("--out", type=Path, default=None, help=f"result JSON (default {RESULT})")
    p.add_argument("--pages", type=Path, default=None, help=f"page folder (default {pages.PAGES})")
    args = p.parse_args(argv)
    if args.quick:
        args.min_reps = args.max_reps = 1
    args.warm_rep = not args.quick
    args.out = args.out or (Path("runs/bench-quick/engine.json") if args.quick else RESULT)
    args.pages = args.pages or (args.out.parent if args.quick else pages.PAGES)
    return args


def cases(args: argparse.Namespace) -> list[tuple[str, Path, ImageSet]]:
    from bench import heavy_model  # noqa: PLC0415  (imports torch; only here)

    out = []
    q = args.quick
    if "bundled" in args.models:
        bundled = args.model_dir
        if not (bundled / "manifest.json").is_file():
            if not args.stand_in:
                sys.exit(f"{bundled}: no model there (run `make model`, or pass --stand-in)")
            bundled = heavy_model.ensure(heavy_model.stand_in_config())
        n = args.images or (64 if q else 512)
        imgs = write_image_set(args.image_root / f"fmnist-test-28-png-{n}", count=n)
        out.append(("bundled", bundled, imgs))
    if "heavy" in args.models:
        heavy = heavy_model.ensure(heavy_model.heavy_config(args.heavy_model_dir))
        n = args.images or (32 if q else 64)
        imgs = write_image_set(
            args.image_root / f"fmnist-test-224-jpg-{n}", count=n, size=224, channels=3, fmt="JPEG"
        )
        out.append(("heavy", heavy, imgs))
    return out


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    from bench import engine_trace  # noqa: PLC0415

    result = machine.stamp("engine") | {"quick": args.quick, "models": []}
    t0 = time.monotonic()
    sizes = sorted(args.batch_sizes)
    for key, model_dir, images in cases(args):
        warm = sizes if args.quick else list(range(1, max(sizes) + 1))
        case = load_case(key, model_dir, images, warm, sizes)
        model = measure(case, sizes, args)
        if args.trace:
            model["trace"] = engine_trace.trace(case, max(sizes), args.trace_bursts)
        result["models"].append(model)
        case.loop.close()
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def run_twice(argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The same command twice, each in a fresh process, back to back."""
    runs = []
    for i in (1, 2):
        out = args.out.with_name(f"{args.out.stem}-run{i}.json")
        cmd = [sys.executable, "-m", "bench", "engine", *[a for a in argv if a != "--twice"]]
        subprocess.run([*cmd, "--out", str(out), "--no-page"], check=True)
        runs.append(pages.load(out))
        out.unlink()
    result = machine.stamp("engine") | {"quick": args.quick, "runs": runs}
    return result | {"agreement": agreement(runs, args.agreement)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from bench import engine_page  # noqa: PLC0415

    if argv[:1] == ["report"]:
        return engine_page.main(argv[1:])
    write_page = "--no-page" not in argv
    argv = [a for a in argv if a != "--no-page"]
    args = parse_args(argv)
    result = run_twice(argv, args) if args.twice else run_once(args)
    pages.save(result, args.out)
    log.info("wrote %s", args.out)
    if write_page:
        log.info("wrote %s", engine_page.write_page(result, args.out, args.pages))
    if args.twice and not result["agreement"]["agree"]:
        log.error("the two runs differ by %.1f%%", 100 * result["agreement"]["max_spread"])
        return 1
    return 0
