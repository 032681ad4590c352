"""fp16 / int8 variants of the stage graphs: time per stage at batch 32 against fp32, and what
they cost in accuracy at the model's calibrated operating point.

Variants (bench/stage_variants.py): fp32 (the model directory's graphs), fp16, int8 (static
QDQ, calibrated on training images), int8-dyn (dynamic quantisation). Every variant's stages are
timed with the server's session options (level all, intra-op threads = CPUs, no spinning) on the
same float32 stage inputs, variants interleaved in every repetition, medians. Accuracy: the
variant's stages chained over the evaluation images, scored with the manifest's thresholds
(elf_core's exit rule): balanced top-1, exit mix, and agreement with fp32 (answer, exit taken).

  bundled  models/fashion-mnist-lt: evaluation on its validation split (rebuilt from config.json
           as `elf-export calibrate` does), quantisation calibrated on its first training images
  heavy    runs/bench-models/resnet50-224 (random backbone): evaluation on the images that set
           its thresholds (training images 512..767), calibration on training images 0..

    python -m bench.stage_precision --models bundled   # bench/results/stage_precision.{json,md}
    python -m bench.stage_precision --models heavy     # adds the heavy model to the same files
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import machine
from bench.stage_precision_report import markdown, merge_result
from bench.stage_variants import VARIANTS, build_variant, stage_inputs
from elf_core.calibration import evaluate_thresholds, final_exit_only
from elf_core.exits import early_exit, softmax
from elf_core.manifest import Manifest, load_manifest
from server.engine.sessions import session_options
from server.settings import available_cpus

log = logging.getLogger("bench.stage_precision")

# Quantisation calibration images: MinMax keeps every activation of every image until the end
# (about 2 GB for 32 images at 224 px in the resnet50-style stages).
CALIB = {"bundled": 256, "heavy": 32}


@dataclass(frozen=True)
class Subject:
    key: str
    model_dir: Path
    manifest: Manifest
    calib: np.ndarray  # float32 [M, C, H, W], normalized: quantisation calibration images
    x: np.ndarray  # float32 [N, C, H, W], normalized: evaluation images
    y: np.ndarray  # labels [N]
    tail: list[int] | None  # tail classes (long-tailed training set), None when balanced
    evaluation: str  # what x is
    calibration: str  # what calib is

    @property
    def stage_paths(self) -> list[Path]:
        return [self.model_dir / s.file for s in self.manifest.stages]


def load_subject(key: str, model_dir: Path, calib_images: int) -> Subject:
    """A trained export (config.json): its validation split; a bench model (bench_model.json):
    the images that set its thresholds."""
    from bench import heavy_model  # noqa: PLC0415  (torch: only here)

    manifest = load_manifest(model_dir)
    if (model_dir / heavy_model.CONFIG_FILE).is_file():
        cfg = heavy_model.BenchModelConfig(out=model_dir, **_bench_key(model_dir))
        x, y = heavy_model.inputs(cfg, cfg.fit_images, cfg.calib_images)
        calib, _ = heavy_model.inputs(cfg, 0, calib_images)
        last = cfg.fit_images + cfg.calib_images - 1
        evaluation = f"fashion-mnist train images {cfg.fit_images}..{last} (set its thresholds)"
        return Subject(key, model_dir, manifest, calib, x, y, None, evaluation,
                       f"fashion-mnist train images 0..{calib_images - 1}")  # fmt: skip
    import torch  # noqa: PLC0415

    from elf_core.accuracy import class_thirds  # noqa: PLC0415
    from model_export.runtime import normalize  # noqa: PLC0415
    from model_export.splits import model_splits  # noqa: PLC0415

    splits = model_splits(model_dir, manifest)
    val = splits.val
    x = normalize(val.batch(torch.arange(len(val))).numpy(), splits.mean, splits.std)
    calib = splits.train.batch(torch.arange(calib_images)).numpy()
    return Subject(
        key, model_dir, manifest, normalize(calib, splits.mean, splits.std), x,
        val.labels.numpy(), class_thirds(splits.train_class_counts)[2],
        f"validation split of {splits.name} ({len(val)} images, balanced)",
        f"first {calib_images} images of the long-tailed training split",
    )  # fmt: skip


def _bench_key(model_dir: Path) -> dict[str, Any]:
    d = json.loads((model_dir / "bench_model.json").read_text(encoding="utf-8"))
    d["exit_mix"] = tuple(d["exit_mix"])
    return dict(d)


def exit_probs(paths: list[Path], x: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Softmax of every exit over x with the stages chained: [K] arrays [N, classes]."""
    from model_export.runtime import StageChain  # noqa: PLC0415

    chain = StageChain(paths)
    outs = [chain(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [softmax(np.concatenate(z)) for z in zip(*outs, strict=True)]


def accuracy(s: Subject, probs: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, Any]:
    """The variant at the manifest's thresholds, and how often it agrees with fp32 (ref)."""
    m = s.manifest
    ratio = [e.cumulative_flops / m.flops_full for e in m.exits]
    point = evaluate_thresholds(probs, s.y, ratio, m.thresholds, tail_classes=s.tail)
    final = final_exit_only(probs, s.y, ratio, tail_classes=s.tail)
    pred, idx = early_exit(probs, m.thresholds)
    ref_pred, ref_idx = early_exit(ref, m.thresholds)
    return {
        "balanced_accuracy": round(point.balanced_accuracy, 4),
        "accuracy": round(point.accuracy, 4),
        "tail_accuracy": None if point.tail_accuracy is None else round(point.tail_accuracy, 4),
        "flops_ratio": round(point.flops_ratio, 4),
        "exit_rates": [round(r, 4) for r in point.exit_rates],
        "final_exit_balanced_accuracy": round(final.balanced_accuracy, 4),
        "answer_agreement": round(float(np.mean(pred == ref_pred)), 4),
        "exit_agreement": round(float(np.mean(idx == ref_idx)), 4),
        "final_exit_agreement": round(float(np.mean(probs[-1].argmax(1) == ref[-1].argmax(1))), 4),
    }


def timing(
    graphs: dict[str, list[Path]], inputs: list[np.ndarray], reps: int, calls: int
) -> dict[str, list[float]]:
    """Per variant, ms per image of each stage (median over reps; variants interleaved)."""
    opts = session_options(available_cpus(), False)
    out: dict[str, list[float]] = {v: [] for v in graphs}
    names = list(graphs)
    for k, x in enumerate(inputs):
        sess = {
            v: ort.InferenceSession(
                str(p[k]), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            for v, p in graphs.items()
        }
        feeds = {"input": x}
        for s in sess.values():
            s.run(None, feeds)  # warm-up
        times: dict[str, list[float]] = {v: [] for v in names}
        for rep in range(reps):
            for v in names[rep % len(names) :] + names[: rep % len(names)]:
                t0 = time.perf_counter()
                for _ in range(calls):
                    sess[v].run(None, feeds)
                times[v].append((time.perf_counter() - t0) / calls / len(x))
        for v in names:
            out[v].append(round(1e3 * statistics.median(times[v]), 5))
        log.info("stage %d timed: %s", k, {v: out[v][-1] for v in names})
    return out


def measure(s: Subject, args: argparse.Namespace, facts: dict[str, Any]) -> dict[str, Any]:
    root = args.variant_root / s.key
    graphs: dict[str, list[Path]] = {}
    failed: dict[str, str] = {}
    for v in args.variants:
        built = build_variant(v, s.stage_paths, s.calib, root / v)
        if isinstance(built, str):
            failed[v] = built
        else:
            graphs[v] = built
    ref = exit_probs(s.stage_paths, s.x)
    acc = {v: accuracy(s, exit_probs(p, s.x), ref) for v, p in graphs.items()}
    log.info("%s accuracy: %s", s.key, acc)
    calls = max(1, round(args.calls_bundled if s.x.shape[-1] <= 64 else 1))
    ms = timing(graphs, stage_inputs(s.stage_paths, s.x[: args.batch]), args.reps, calls)
    return {
        "model": s.key,
        "model_dir": str(s.model_dir),
        "name": s.manifest.name,
        "command": machine.command_line(),
        "machine": facts,
        "evaluation": s.evaluation,
        "evaluation_images": len(s.x),
        "calibration": s.calibration,
        "thresholds": [round(t, 6) for t in s.manifest.thresholds],
        "batch": args.batch,
        "reps": args.reps,
        "calls": calls,
        "failed": failed,
        "variants": {v: {"stage_ms_per_image": ms[v], **acc[v]} for v in graphs},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["bundled"], choices=["bundled", "heavy"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--calls-bundled", type=int, default=20, help="calls per repetition, 28 px")
    p.add_argument(
        "--calib-images", type=int, default=None, help="bundled 256, heavy 32 (memory-bound)"
    )
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--variant-root", type=Path, default=Path("runs/stage-variants"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    if "fp32" not in args.variants:
        p.error("--variants must include fp32 (the reference)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dirs = {"bundled": args.model_dir, "heavy": args.heavy_model_dir}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "stage_precision.json"
    for key in args.models:
        facts = machine.facts()  # before this process loads the machine
        entry = measure(load_subject(key, dirs[key], args.calib_images or CALIB[key]), args, facts)
        result = merge_result(path, entry)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        (args.out / "stage_precision.md").write_text(markdown(result), encoding="utf-8")


if __name__ == "__main__":
    main()
