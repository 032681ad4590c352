"""A benchmark model directory without training: random-feature backbone, fitted exit heads.

The serving benchmarks need the `resnet50`-style network at 224 px (and, until the bundled model
exists, a resnet32 stand-in). Training either is out of reach on 2 CPU cores, so: the backbone
keeps its random initialisation (the FLOPs and the run time are those of the real network), and
every exit's linear classifier is fitted in closed form (ridge regression on the pooled features
of `fit_images` Fashion-MNIST training images, one-hot targets, logits scaled by `logit_scale`).
The answers then carry real signal, the exits disagree as real exits do, and accuracy against
the true labels is meaningful, if modest. Per-exit thresholds are quantiles of the softmax
maximum on `calib_images` other training images, chosen so that the fractions `exit_mix` leave
at exits 0..K-1 (stated in the manifest's provenance and in the results).

Export goes through model_export's own code (stage graphs, full.onnx, ONNX checker, parity with
torch, FLOP cross-check); there is no calibration on a validation split.

    python -m bench.heavy_model --arch resnet50 --size 224 --out runs/bench-models/resnet50-224
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.images import encode, fashion_mnist
from model_export.build import check_destination, move_into_place, stage_specs, staging_dir
from model_export.graphs import export_graphs
from model_export.manifest import (
    Calibration,
    CalibrationPoint,
    FileRef,
    Manifest,
    Preprocessing,
    Provenance,
    load_manifest,
    sha256_file,
    write_manifest,
)
from model_export.report import exit_specs
from model_export.runtime import StageRunner
from model_export.verify import VerificationError, check_flops, check_graph
from server.preprocess import decode_image
from training.flops import cumulative_flops, full_flops
from training.models import ExitHead, ModelConfig, MultiExitNet, build_model

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


@torch.no_grad()
def check_parity_relative(
    net: MultiExitNet, paths: list[Path], full: Path, x: np.ndarray, rtol: float = 1e-4
) -> None:
    """Chained stage graphs and full.onnx vs torch, relative to each exit's logit range (the
    fitted heads give logits far from unit scale, so model_export's absolute 1e-4 is too tight)."""
    ref = [t.numpy() for t in net(torch.from_numpy(x))]
    staged = StageRunner(paths)(x)
    whole = StageRunner([full])  # one session; full.onnx returns every exit's logits
    outs = whole.sessions[0].run(None, {"input": x})
    for name, got in (("stage graphs", staged), (full.name, outs)):
        for k, (a, r) in enumerate(zip(got, ref, strict=True)):
            err = float(np.abs(a - r).max() / max(1.0, float(np.abs(r).max())))
            if not err <= rtol:
                raise VerificationError(f"{full.parent}: {name}, exit {k}: relative diff {err:.1e}")
    log.info("parity with torch on %d images (relative %.0e)", len(x), rtol)


def softmax_max(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray((e / e.sum(axis=1, keepdims=True)).max(axis=1))


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


def evaluate(
    logits: list[np.ndarray],
    y: np.ndarray,
    thresholds: list[float],
    cum: list[int],
    full: int,
    *,
    final_only: bool = False,
) -> CalibrationPoint:
    """Early-exit answers at `thresholds` (or the final exit alone) against the labels y."""
    conf = [softmax_max(z) for z in logits]
    k_last = len(logits) - 1
    exit_idx = np.full(len(y), k_last)
    for k in reversed(range(k_last)):
        if not final_only:
            exit_idx[conf[k] >= thresholds[k]] = k
    pred = np.array([logits[e][i].argmax() for i, e in enumerate(exit_idx)])
    correct = pred == y
    per_class = [correct[y == c].mean() for c in np.unique(y)]
    return CalibrationPoint(
        thresholds=[*thresholds, 0.0],
        balanced_accuracy=float(np.mean(per_class)),
        accuracy=float(correct.mean()),
        flops_ratio=float(np.mean([cum[e] for e in exit_idx]) / full),
        exit_rates=[float(np.mean(exit_idx == k)) for k in range(len(logits))],
    )


def calibration(
    cfg: BenchModelConfig, chosen: CalibrationPoint, final: CalibrationPoint
) -> Calibration:
    last = cfg.fit_images + cfg.calib_images - 1
    return Calibration(
        split=f"fashion-mnist train images {cfg.fit_images}..{last}",
        metric=f"exit mix {list(cfg.exit_mix)} (quantile thresholds, not an accuracy target)",
        tolerance=0.0,
        best=final,
        chosen=chosen,
        final_exit_only=final,
        curve_file=None,
    )


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
    shape = (cfg.channels, cfg.size, cfg.size)
    out = cfg.out.resolve()
    check_destination(out)
    tmp = staging_dir(out)
    try:
        stages, full = export_graphs(net, shape, tmp)
        paths = [tmp / g.file for g in stages]
        specs = [check_graph(p) for p in paths]
        check_graph(tmp / full.file)
        check_parity_relative(net, paths, tmp / full.file, x_fit[:4])
        flops = check_flops(net, shape, paths, tmp / full.file)
        x_cal, y_cal = inputs(cfg, cfg.fit_images, cfg.calib_images)
        runner = StageRunner(paths)
        chunks = [runner(x_cal[i : i + 32]) for i in range(0, len(x_cal), 32)]
        logits = [np.concatenate(z) for z in zip(*chunks, strict=True)]
        thresholds = mix_thresholds([softmax_max(z) for z in logits], cfg.exit_mix)
        cum, total = cumulative_flops(flops.per_stage), full_flops(flops.per_stage)
        point = evaluate(logits, y_cal, thresholds, cum, total)
        no_exit = [1.0] * (len(logits) - 1)
        final = evaluate(logits, y_cal, no_exit, cum, total, final_only=True)
        manifest = Manifest(
            name=cfg.model_name,
            version="bench-1",
            class_names=CLASS_NAMES,
            preprocessing=preprocessing(cfg),
            stages=stage_specs(tmp, [g.file for g in stages], specs, flops.per_stage),
            exits=exit_specs(thresholds, cum),
            full_model=FileRef(file=full.file, sha256=sha256_file(tmp / full.file)),
            flops_full=total,
            calibration=calibration(cfg, point, final),
            provenance=Provenance(
                dataset=f"fashion-mnist at {cfg.size} px, {cfg.channels} channel(s)",
                method="random backbone, ridge-fitted exit classifiers (bench.heavy_model)",
                loss="none",
                epochs=0,
                architecture=cfg.arch,
                command=json.dumps(cfg.key()),
            ),
        )
        write_manifest(manifest, tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.key(), indent=1) + "\n", encoding="utf-8")
        load_manifest(tmp)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "%s: exit rates %s, accuracy %.3f (final exit alone %.3f), FLOPs ratio %.3f",
        out,
        [round(r, 3) for r in point.exit_rates],
        point.accuracy,
        final.accuracy,
        point.flops_ratio,
    )
    return out


def ensure(cfg: BenchModelConfig) -> Path:
    """The model directory for cfg, built only when missing or built with another config."""
    marker = cfg.out / CONFIG_FILE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == cfg.key():
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
