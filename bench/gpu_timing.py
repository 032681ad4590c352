"""Timings for bench/gpu_smoke.py: session creation and first calls per cuDNN search mode, memory
levels, and the stages chained by the server's runner against full.onnx."""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.gpu_tools import gpu_memory_used_mib, random_batches
from elf_core.manifest import load_manifest
from server.engine.placement import session_options
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions
from server.settings import Settings


def make_runner(
    model_dir: Path, args: argparse.Namespace, search: str
) -> tuple[OnnxStageRunner, float]:
    """The server's sessions and runner for model_dir; returns (runner, creation seconds)."""
    settings = Settings(
        model_dir=model_dir,
        providers=args.providers,
        cuda_device_id=args.device_id,
        cudnn_conv_algo_search=search,  # type: ignore[arg-type]
        max_batch_size=max(args.sizes),
    )
    manifest = load_manifest(model_dir)
    t0 = time.perf_counter()
    stages = load_stage_sessions(manifest, model_dir, settings)
    runner = OnnxStageRunner(manifest, stages, max_parts=settings.max_batch_size)
    return runner, time.perf_counter() - t0


def inputs(runner: OnnxStageRunner, n: int, seed: int = 0) -> np.ndarray:
    """n random normalised images [n, C, H, W] (timings do not depend on the pixels)."""
    pre = runner.manifest.preprocessing
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, pre.channels, pre.height, pre.width)).astype(np.float32)


def chain(runner: OnnxStageRunner, x: np.ndarray) -> np.ndarray | None:
    """Every stage on x (no exit); logits of the last stage on the host (synchronises)."""
    h: ort.OrtValue | None = runner.to_device(x)
    logits = None
    for k in range(runner.num_stages):
        assert h is not None
        h, logits = runner.run(k, h)
    return logits


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def warm_up_timing(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per cuDNN search mode: creation, first/second call per batch size, memory levels."""
    out: dict[str, Any] = {"model": str(model_dir), "batch_sizes": args.sizes}
    for search in ("HEURISTIC", "EXHAUSTIVE"):
        mem = {"before": gpu_memory_used_mib(args.device_id)}
        runner, create_s = make_runner(model_dir, args, search)
        mem["after_load"] = gpu_memory_used_mib(args.device_id)
        x = inputs(runner, max(args.sizes))
        first, second = {}, {}
        t_first = time.perf_counter()
        for b in args.sizes:
            t0 = time.perf_counter()
            chain(runner, x[:b])
            first[b] = ms_since(t0)
            t0 = time.perf_counter()
            chain(runner, x[:b])
            second[b] = ms_since(t0)
        first_calls_s = time.perf_counter() - t_first
        t0 = time.perf_counter()
        runner.warm_up(args.sizes)  # the server's warm-up: stages again (cheap now) + merges
        entry: dict[str, Any] = {
            "providers": runner.stages.providers,
            "session_creation_s": round(create_s, 3),
            "first_and_second_calls_s": round(first_calls_s, 3),
            "server_warm_up_after_s": round(time.perf_counter() - t0, 3),
            "first_call_ms": first,
            "second_call_ms": second,
        }
        mem["after_warm_up"] = gpu_memory_used_mib(args.device_id)
        if search == "HEURISTIC":
            t0 = time.perf_counter()
            rows = random_batches(runner, args.batches, max(args.sizes), seed=2)
            entry["random_batches"] = {
                "batches": args.batches, "rows_out": rows, "s": round(time.perf_counter() - t0, 2),
            }  # fmt: skip
            mem[f"after_{args.batches}_batches"] = gpu_memory_used_mib(args.device_id)
        entry["gpu_memory_used_mib"] = mem
        out[search] = entry
        del runner
        gc.collect()
    return out


def runner_bench(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per image ms: the stages chained by the server's runner vs full.onnx, no early exit."""
    runner, _ = make_runner(model_dir, args, "HEURISTIC")
    full_ref = runner.manifest.full_model
    if full_ref is None:
        raise RuntimeError(f"{model_dir}: no full.onnx in the manifest")
    requested = runner.stages.requested
    opts = session_options(runner.stages.options.intra_op_num_threads, False, requested)
    full = ort.InferenceSession(str(model_dir / full_ref.file), opts, providers=requested)
    runner.stages.check(f"{model_dir.name} full.onnx", full)
    name = full.get_inputs()[0].name
    sizes = args.bench_sizes
    x = inputs(runner, max(sizes) * 4, seed=3)
    for b in sizes:
        chain(runner, x[:b])
        full.run(None, {name: x[:b]})
    per_image: dict[str, dict[int, list[float]]] = {"stages": {}, "full": {}}
    for _ in range(args.reps):
        for b in sizes:
            chunks = [x[i : i + b] for i in range(0, len(x), b)]
            t0 = time.perf_counter()
            for c in chunks:
                chain(runner, c)
            per_image["stages"].setdefault(b, []).append((time.perf_counter() - t0) / len(x))
            t0 = time.perf_counter()
            for c in chunks:
                full.run(None, {name: c})
            per_image["full"].setdefault(b, []).append((time.perf_counter() - t0) / len(x))
    result: dict[str, Any] = {"model": str(model_dir), "providers": runner.stages.providers}
    for b in sizes:
        st = statistics.median(per_image["stages"][b]) * 1000
        fu = statistics.median(per_image["full"][b]) * 1000
        result[f"batch_{b}"] = {
            "stages_ms_per_image": round(st, 4),
            "full_ms_per_image": round(fu, 4),
            "stages_over_full": round(st / fu, 3) if fu > 0 else None,
        }
    return result
