"""A benchmark model directory without training: random-feature backbone, fitted exit heads.

The serving benchmarks need the `resnet50`-style network at 224 px (and a resnet32 stand-in for
when the bundled model directory is absent). Training either is out of reach on 2 CPU cores, so:
the backbone keeps its random initialisation (the FLOPs and the run time are those of the real
network), and every exit's linear classifier is fitted in closed form (ridge regression on the
pooled features of `fit_images` Fashion-MNIST training images, one-hot targets, logits scaled by
`logit_scale`). The answers then carry real signal, the exits disagree as real exits do, and
accuracy against the true labels is meaningful, if modest. Per-exit thresholds are quantiles of
the softmax maximum on `calib_images` other training images, chosen so that the fractions
`exit_mix` leave at exits 0..K-1 (stated in the manifest's provenance and in the results).

Export is model_export.export.export_model (stage graphs, full.onnx, ONNX checker, batch sizes,
parity with torch, FLOP cross-check, manifest, atomic move) with this module's calibration step
(exit-mix quantiles) in place of the validation-split search.

    python -m bench heavy-model --kind heavy --out runs/bench-models/resnet50-224
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.images import encode, fashion_mnist
from elf_core.calibration import (
    evaluate_thresholds,
    final_exit_only,
    pareto_front,
    threshold_curve,
)
from elf_core.exits import softmax
from elf_core.flops import cumulative_flops_ratio
from elf_core.manifest import Calibration, Preprocessing, Provenance, load_manifest
from model_export.export import (
    Calibrated,
    CalibrationStep,
    ExportConfig,
    ModelCard,
    export_model,
)
from model_export.report import CURVE_FILE, manifest_point, point_dict
from model_export.runtime import StageChain
from server.preprocess import decode_image
from training.networks import ExitHead, ModelConfig, MultiExitNet, build_model

log = logging.getLogger("bench.heavy_model")

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics on the [0, 1] scale
CONFIG_FILE = "bench_model.json"


@dataclass(frozen=True)
class BenchModelConfig:
    out: Path
    arch: str = "resnet50"
    size: int = 224
    channels: int = 3
    exit_mix: tuple[float, ...] = (0.3, 0.2, 0.2, 0.3)  # fraction leaving at each exit
    fit_images: int = 512  # training images 0..fit-1 fit the heads
    calib_images: int = 256  # the next ones set the thresholds
    ridge: float = 0.01
    logit_scale: float = 8.0
    seed: int = 0
    name: str = field(default="")

    @property
    def model_name(self) -> str:
        return self.name or f"{self.arch}-{self.size}px-random"

    def key(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("out")
        d["exit_mix"] = list(self.exit_mix)
        return d


def preprocessing(cfg: BenchModelConfig) -> Preprocessing:
    c = cfg.channels
    return Preprocessing(
        channels=c,  # type: ignore[arg-type]
        height=cfg.size,
        width=cfg.size,
        mean=[MEAN] * c,
        std=[STD] * c,
        resize="resize",
    )


def inputs(cfg: BenchModelConfig, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Training images start..start+count, encoded as the benchmark sends them and decoded with
    the server's preprocessing: (float32 [N, C, S, S], labels [N])."""
    images, labels = fashion_mnist("train")
    fmt = "JPEG" if cfg.size > 64 else "PNG"
    pre = preprocessing(cfg)
    xs = [
        decode_image(encode(images[i], cfg.size, cfg.channels, fmt), pre, 1 << 30)
        for i in range(start, start + count)
    ]
    return np.stack(xs), labels[start : start + count]


@torch.no_grad()
def pooled_features(net: MultiExitNet, x: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Per exit, the pooled features its classifier sees: [N, channels_k] float64."""
    per_exit: list[list[np.ndarray]] = [[] for _ in net.stages]
    for i in range(0, len(x), batch):
        h = torch.from_numpy(x[i : i + batch])
        for k, (stage, head) in enumerate(zip(net.stages, net.exits, strict=True)):
            h = stage(h)
            assert isinstance(head, ExitHead)
            pooled = F.adaptive_avg_pool2d(head.conv(h), 1).flatten(1)
            per_exit[k].append(pooled.double().numpy())
    return [np.concatenate(p) for p in per_exit]


@torch.no_grad()
def fit_heads(net: MultiExitNet, x: np.ndarray, y: np.ndarray, cfg: BenchModelConfig) -> None:
    """Ridge regression of one-hot labels on each exit's standardised pooled features."""
    onehot = np.eye(net.num_classes)[y] - 1.0 / net.num_classes
    for head, f in zip(net.exits, pooled_features(net, x), strict=True):
        assert isinstance(head, ExitHead)
        mu, sd = f.mean(0), f.std(0)
        sd = np.maximum(sd, 1e-3 * sd.mean() + 1e-12)  # near-constant channels: no huge weights
        z = (f - mu) / sd
        w = np.linalg.solve(z.T @ z + cfg.ridge * len(z) * np.eye(z.shape[1]), z.T @ onehot)
        # logits = scale * (((f - mu) / sd) @ w): folded into the head's Linear layer.
        weight = cfg.logit_scale * (w / sd[:, None]).T  # [classes, channels]
        bias = -weight @ mu
        head.fc.weight.copy_(torch.from_numpy(weight).float())
        head.fc.bias.copy_(torch.from_numpy(bias).float())


def mix_thresholds(conf: list[np.ndarray], mix: tuple[float, ...]) -> list[float]:
    """Thresholds t_0..t_{K-2} so that about mix[k] of all images leave at exit k."""
    n = len(conf[0])
    remaining = np.ones(n, bool)
    thresholds = []
    for k, frac in enumerate(mix[:-1]):
        c = conf[k][remaining]
        want = min(round(frac * n), len(c))
        # The want-th highest confidence still leaves here (>=); nothing to leave: threshold 1.
        t = float(np.sort(c)[::-1][want - 1]) if want > 0 else 1.0
        thresholds.append(t)
        remaining &= conf[k] < t
    return thresholds


def exit_mix_calibration(cfg: BenchModelConfig) -> CalibrationStep:
    """export_model's calibration step: quantile thresholds for cfg.exit_mix on the calibration
    images, scored with elf_core's exit rule (no accuracy target, no validation split)."""

    def step(
        stage_paths: Sequence[Path], per_stage: Sequence[tuple[int, int]], model_dir: Path
    ) -> Calibrated:
        x_cal, y_cal = inputs(cfg, cfg.fit_images, cfg.calib_images)
        runner = StageChain(stage_paths)
        chunks = [runner(x_cal[i : i + 32]) for i in range(0, len(x_cal), 32)]
        probs = [softmax(np.concatenate(z)) for z in zip(*chunks, strict=True)]
        thresholds = mix_thresholds([p.max(axis=1) for p in probs], cfg.exit_mix)
        ratio = cumulative_flops_ratio(per_stage)
        point = manifest_point(evaluate_thresholds(probs, y_cal, ratio, thresholds))
        final = manifest_point(final_exit_only(probs, y_cal, ratio))
        last = cfg.fit_images + cfg.calib_images - 1
        write_menu(model_dir, probs, y_cal, ratio, thresholds)
        calibration = Calibration(
            split=f"fashion-mnist train images {cfg.fit_images}..{last}",
            metric=f"exit mix {list(cfg.exit_mix)} (quantile thresholds, not an accuracy target)",
            tolerance=0.0,
            best=final,
            chosen=point,
            final_exit_only=final,
            curve_file=CURVE_FILE,
        )
        log.info(
            "exit rates %s, accuracy %.3f (final exit alone %.3f), FLOPs ratio %.3f",
            [round(r, 3) for r in point.exit_rates],
            point.accuracy,
            final.accuracy,
            point.flops_ratio,
        )
        return Calibrated(thresholds, calibration)

    return step


def write_menu(
    model_dir: Path,
    probs: list[np.ndarray],
    labels: np.ndarray,
    ratio: Sequence[float],
    thresholds: Sequence[float],
) -> None:
    """calibration.json with the threshold curve on the calibration images (the load
    controller's menu, server/load/controller.py); `chosen` is the exit-mix point."""
    chosen = evaluate_thresholds(probs, labels, ratio, thresholds)
    curve = sorted([*threshold_curve(probs, labels, ratio), chosen], key=lambda p: p.flops_ratio)
    data = {
        "split": "calibration images (fashion-mnist train), exit-mix thresholds",
        "metric": "balanced_accuracy",
        "chosen": point_dict(chosen),
        "pareto": [point_dict(p) for p in pareto_front(curve)],
        "curve": [point_dict(p) for p in curve],
    }
    (model_dir / CURVE_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def build(cfg: BenchModelConfig) -> Path:
    """Build, fit, export, verify and calibrate into cfg.out (replacing a previous one)."""
    torch.manual_seed(cfg.seed)
    mc = ModelConfig(arch=cfg.arch, num_classes=len(CLASS_NAMES), in_channels=cfg.channels)
    net = build_model(mc).eval()
    if len(cfg.exit_mix) != net.num_exits or abs(sum(cfg.exit_mix) - 1) > 1e-6:
        raise ValueError(f"exit_mix needs {net.num_exits} fractions summing to 1: {cfg.exit_mix}")
    t0 = time.perf_counter()
    x_fit, y_fit = inputs(cfg, 0, cfg.fit_images)
    fit_heads(net, x_fit, y_fit, cfg)
    log.info("heads fitted on %d images in %.0f s", len(x_fit), time.perf_counter() - t0)
    card = ModelCard(
        class_names=CLASS_NAMES,
        preprocessing=preprocessing(cfg),
        provenance=Provenance(
            dataset=f"fashion-mnist at {cfg.size} px, {cfg.channels} channel(s)",
            method="random backbone, ridge-fitted exit classifiers (bench.heavy_model)",
            loss="none",
            epochs=0,
            architecture=cfg.arch,
            command=json.dumps(cfg.key()),
        ),
    )
    export_cfg = ExportConfig(out=cfg.out, tolerance=0.0, name=cfg.model_name, version="bench-1")
    result = export_model(
        net,
        card,
        export_cfg,
        parity_inputs=x_fit[:4],
        calibrate=exit_mix_calibration(cfg),
        # The fitted heads give logits far from unit scale: parity relative to their range.
        relative_parity=True,
        extra_files={CONFIG_FILE: json.dumps(cfg.key(), indent=1) + "\n"},
    )
    return result.model_dir


def ensure(cfg: BenchModelConfig) -> Path:
    """The model directory for cfg, built only when missing or built with another config."""
    marker = cfg.out / CONFIG_FILE
    fresh = marker.is_file() and (cfg.out / CURVE_FILE).is_file()  # older builds: no curve
    if fresh and json.loads(marker.read_text(encoding="utf-8")) == cfg.key():
        load_manifest(cfg.out)
        return cfg.out
    log.info("building benchmark model %s (a few minutes; cached afterwards)", cfg.out)
    return build(cfg)


HEAVY = {"arch": "resnet50", "size": 224, "channels": 3, "exit_mix": (0.3, 0.2, 0.2, 0.3)}
STAND_IN = {"arch": "resnet32", "size": 28, "channels": 1, "exit_mix": (0.5, 0.3, 0.2)}


def heavy_config(out: Path = Path("runs/bench-models/resnet50-224")) -> BenchModelConfig:
    return BenchModelConfig(out=out, **HEAVY)  # type: ignore[arg-type]


def stand_in_config(out: Path = Path("runs/bench-models/resnet32-28")) -> BenchModelConfig:
    return BenchModelConfig(out=out, **STAND_IN)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["heavy", "stand-in"], default="heavy")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = heavy_config() if args.kind == "heavy" else stand_in_config()
    if args.out is not None:
        cfg = BenchModelConfig(**{**asdict(cfg), "out": args.out})
    print(ensure(cfg))


if __name__ == "__main__":
    main()
