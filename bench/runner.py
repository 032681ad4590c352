"""In-process benchmark of the early-exit engine against full.onnx, per image, at batch 1, 8, 32.

Variants, all on the same decoded images, with the same ONNX Runtime session options (the
server's: intra-op threads = CPUs, no spinning), interleaved within every repetition (the order
rotates) and reported as medians over repetitions:

  full         full.onnx, one sess.run per batch (what a plain deployment runs)
  stages       the stage graphs chained with the server's OnnxStageRunner, no early exit
               (the price of splitting the network)
  early-exit   the same runner, rows that exit are dropped after each stage (per batch; the
               survivors are compacted with the server's merge graph)
  batcher      the server's Batcher (max_batch_size = b, 2 ms queue delay) fed every image at
               once: exits, compaction and merging of survivors across batches, futures;
               ELF_SCHEDULING=deepest-first
  batcher-age  the same with ELF_SCHEDULING=age-aware (server/batching/scheduling.py)

Ideal = full x (expected FLOPs ratio of the exit mix measured on these images). Goal: at batch 32
the realised saving 1 - t/t_full is at least 90% of the FLOPs saving 1 - ratio.

    python -m bench.runner                     # real run (~2.5 min): bench/results/runner.{md,json}
    python -m bench.runner --quick --stand-in  # smoke test (~40 s) into runs/bench-quick/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import machine
from bench.images import ImageSet, write_image_set
from bench.runner_report import write_runner_report
from elf_core.exits import softmax
from elf_core.manifest import Manifest, load_manifest
from server.batching.batcher import Batcher
from server.batching.scheduling import Policy
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions, session_options
from server.preprocess import decode_image
from server.settings import Settings

log = logging.getLogger("bench.runner")

VARIANTS = ("full", "stages", "early-exit", "batcher", "batcher-age")
Outcome = tuple[np.ndarray, np.ndarray]  # (predicted class [N], exit index [N])


@dataclass
class Case:
    key: str
    model_dir: Path
    manifest: Manifest
    runner: OnnxStageRunner
    full: ort.InferenceSession
    x: np.ndarray  # float32 [N, C, H, W], decoded by the server's preprocessing
    y: np.ndarray  # labels [N]
    thresholds: np.ndarray  # float64 [K], the manifest's (the last is 0)
    loop: asyncio.AbstractEventLoop
    # batch size -> one [K] array per `stages` run: seconds per image spent in each stage graph
    stage_s: dict[int, list[np.ndarray]] = field(default_factory=dict)


def load_case(
    key: str, model_dir: Path, images: ImageSet, warm_sizes: list[int], sizes: list[int]
) -> Case:
    """Sessions as the server makes them; stages warmed at warm_sizes (later stages see any
    size), full.onnx at the measured sizes."""
    manifest = load_manifest(model_dir)
    settings = Settings(model_dir=model_dir, providers="cpu")
    runner = OnnxStageRunner(manifest, load_stage_sessions(manifest, model_dir, settings))
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
        key, model_dir, manifest, runner, full, x, np.asarray(images.labels), thresholds,
        asyncio.new_event_loop(),
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


def run_batcher(case: Case, b: int, policy: Policy = "deepest-first") -> Outcome:
    batcher = Batcher(
        case.runner,
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


RUNS: dict[str, Callable[[Case, int], Outcome]] = {
    "full": run_full,
    "stages": run_stages,
    "early-exit": run_early_exit,
    "batcher": run_batcher,
    "batcher-age": lambda case, b: run_batcher(case, b, "age-aware"),
}


def measure(case: Case, sizes: list[int], reps: int, warm_rep: bool) -> dict[str, Any]:
    """{(variant, b): [seconds per image per repetition]} plus each variant's answers."""
    times: dict[tuple[str, int], list[float]] = {}
    outcomes: dict[tuple[str, int], Outcome] = {}
    for rep in range(-1 if warm_rep else 0, reps):
        for b in sizes:
            shift = (rep + b) % len(VARIANTS)
            for v in VARIANTS[shift:] + VARIANTS[:shift]:
                t0 = time.perf_counter()
                out = RUNS[v](case, b)
                dt = (time.perf_counter() - t0) / len(case.x)
                if rep >= 0:
                    times.setdefault((v, b), []).append(dt)
                    outcomes[(v, b)] = out
        if rep >= 0:
            log.info("%s: repetition %d/%d done", case.key, rep + 1, reps)
    return summarise(case, sizes, times, outcomes)


def summarise(
    case: Case,
    sizes: list[int],
    times: dict[tuple[str, int], list[float]],
    outcomes: dict[tuple[str, int], Outcome],
) -> dict[str, Any]:
    m = case.manifest
    cum = np.array([e.cumulative_flops for e in m.exits], dtype=np.float64)
    rows = []
    stage_shares = {}
    for b in sizes:
        t_full = statistics.median(times[("full", b)])
        # The last repetitions' per-stage times (the warm repetition's are dropped).
        per_stage = np.median(np.stack(case.stage_s[b][-len(times[("stages", b)]) :]), axis=0)
        cum_s = np.cumsum(per_stage)
        stage_shares[b] = [round(float(v), 4) for v in per_stage / per_stage.sum()]
        for v in VARIANTS:
            pred, exits = outcomes[(v, b)]
            t = statistics.median(times[(v, b)])
            flops_ratio = float(cum[exits].mean() / m.flops_full)
            rows.append(
                {
                    "variant": v,
                    "batch": b,
                    "ms_per_image": round(1e3 * t, 4),
                    "ms_per_image_all": [round(1e3 * s, 4) for s in times[(v, b)]],
                    "images_per_s": round(1 / t, 1),
                    "time_vs_full": round(t / t_full, 4),
                    "flops_ratio": round(flops_ratio, 4),
                    "ideal_ms_per_image": round(1e3 * t_full * flops_ratio, 4),
                    # What exits would cost if each stage took its measured time in `stages`:
                    # a zero-overhead early-exit engine on these stage graphs.
                    "stage_time_ideal_ms_per_image": round(1e3 * float(cum_s[exits].mean()), 4),
                    "saving_efficiency": efficiency(t / t_full, flops_ratio),
                    "exit_rates": [round(float(np.mean(exits == k)), 4) for k in range(len(cum))],
                    "accuracy": round(float(np.mean(pred == case.y)), 4),
                }
            )
    return {
        "model": case.key,
        "model_dir": str(case.model_dir),
        "name": m.name,
        "architecture": m.provenance.architecture,
        "input": [m.preprocessing.channels, m.preprocessing.height, m.preprocessing.width],
        "images": len(case.x),
        "flops_full": m.flops_full,
        "thresholds": [round(t, 6) for t in m.thresholds],
        "cumulative_flops_ratio": [round(c / m.flops_full, 4) for c in cum.tolist()],
        "manifest_flops_ratio": m.calibration.chosen.flops_ratio if m.calibration else None,
        "stage_flops_share": [
            round(
                (s.flops_body + s.flops_exit) / sum(t.flops_body + t.flops_exit for t in m.stages),
                4,
            )
            for s in m.stages
        ],
        "stage_time_share": stage_shares,
        "rows": rows,
    }


def efficiency(time_ratio: float, flops_ratio: float) -> float | None:
    """Realised saving / FLOPs saving (1.0 = as good as the FLOPs promise)."""
    if flops_ratio >= 1.0:
        return None
    return round((1 - time_ratio) / (1 - flops_ratio), 4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="few images, 1 repetition: a smoke test")
    p.add_argument(
        "--models", nargs="+", default=["bundled", "heavy"], choices=["bundled", "heavy"]
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--reps", type=int, default=None, help="repetitions (bundled 9, heavy 5)")
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument(
        "--stand-in", action="store_true", help="resnet32 stand-in if model-dir lacks one"
    )
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    p.add_argument("--out", type=Path, default=None, help="default bench/results (quick: runs/)")
    args = p.parse_args(argv)
    args.out = args.out or (Path("runs/bench-quick") if args.quick else Path("bench/results"))
    return args


def cases(args: argparse.Namespace) -> list[tuple[str, Path, ImageSet, int]]:
    from bench import heavy_model  # noqa: PLC0415  (imports torch; only here)

    out = []
    q = args.quick
    if "bundled" in args.models:
        bundled = args.model_dir
        if not (bundled / "manifest.json").is_file():
            if not args.stand_in:
                sys.exit(f"{bundled}: no model there (run `make model`, or pass --stand-in)")
            bundled = heavy_model.ensure(heavy_model.stand_in_config())
        n = 64 if q else 512
        imgs = write_image_set(args.image_root / f"fmnist-test-28-png-{n}", count=n)
        out.append(("bundled", bundled, imgs, args.reps or (1 if q else 9)))
    if "heavy" in args.models:
        heavy = heavy_model.ensure(heavy_model.heavy_config(args.heavy_model_dir))
        n = 32 if q else 64
        imgs = write_image_set(
            args.image_root / f"fmnist-test-224-jpg-{n}", count=n, size=224, channels=3, fmt="JPEG"
        )
        out.append(("heavy", heavy, imgs, args.reps or (1 if q else 5)))
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model, image and output locations of the engine benches built on `cases`."""
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    facts = machine.facts()
    t0 = time.monotonic()
    results = []
    for key, model_dir, images, reps in cases(args):
        sizes = sorted(args.batch_sizes)
        warm = sizes if args.quick else list(range(1, max(sizes) + 1))
        case = load_case(key, model_dir, images, warm, sizes)
        results.append(measure(case, sizes, reps, warm_rep=not args.quick) | {"reps": reps})
        case.loop.close()
    facts["load_average_end_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": machine.command_line(),
        "machine": facts,
        "quick": args.quick,
        "wall_s": round(time.monotonic() - t0, 1),
        "models": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runner.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_runner_report(result, args.out / "runner.md")
    log.info("wrote %s/runner.{json,md} in %.0f s", args.out, result["wall_s"])


if __name__ == "__main__":
    main()
