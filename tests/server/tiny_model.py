"""A tiny three-exit model directory built without torch (onnx.helper + numpy), and its oracle.

Stage k: Conv 3x3 + Relu -> features; exit head: GlobalAveragePool -> Flatten -> Gemm -> logits.
Input "input" [batch, 1, 28, 28] (dynamic batch); stages 0 and 1 output "features" and "logits",
stage 2 outputs "logits"; full.onnx is the backbone alone (the three Conv+Relu bodies and the final
head, no auxiliary head): input -> "logits". Thresholds are set between two
neighbouring confidences of the fixture images so that every exit is used and no image sits on a
threshold (answers do not depend on float rounding).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from elf_core.agreement import Agreement, exit_agreement, write_agreement
from elf_core.exits import softmax
from elf_core.manifest import (
    Calibration,
    CalibrationPoint,
    ExitSpec,
    FileRef,
    Manifest,
    Preprocessing,
    Provenance,
    StageSpec,
    TensorSpec,
    sha256_file,
    write_manifest,
)

NUM_CLASSES = 10
CLASS_NAMES = [f"class_{c}" for c in range(NUM_CLASSES)]
# (in channels, out channels, stride, input side) per stage.
STAGES = [(1, 4, 1, 28), (4, 8, 2, 28), (8, 8, 2, 14)]
MEAN, STD = 0.5, 0.25


def _weights(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for cin, cout, _, _ in STAGES:
        out.append(
            {
                "conv_w": rng.normal(0, 0.6, (cout, cin, 3, 3)).astype(np.float32),
                "conv_b": rng.normal(0, 0.1, cout).astype(np.float32),
                "fc_w": rng.normal(0, 2.5, (NUM_CLASSES, cout)).astype(np.float32),
                "fc_b": rng.normal(0, 0.5, NUM_CLASSES).astype(np.float32),
            }
        )
    return out


def _stage_nodes(k: int, x: str, feats: str, logits: str, w: dict[str, np.ndarray]) -> tuple:
    p = f"s{k}_"
    inits = [numpy_helper.from_array(v, p + n) for n, v in w.items()]
    stride = STAGES[k][2]
    nodes = [
        helper.make_node(
            "Conv",
            [x, p + "conv_w", p + "conv_b"],
            [p + "conv"],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        ),
        helper.make_node("Relu", [p + "conv"], [feats]),
        helper.make_node("GlobalAveragePool", [feats], [p + "gap"]),
        helper.make_node("Flatten", [p + "gap"], [p + "flat"]),
        helper.make_node("Gemm", [p + "flat", p + "fc_w", p + "fc_b"], [logits], transB=1),
    ]
    return nodes, inits


def _tensor(name: str, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _save(nodes: list, inits: list, inputs: list, outputs: list, path: Path) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _side(k: int) -> int:
    return STAGES[k][3] // STAGES[k][2]


def write_graphs(model_dir: Path, seed: int) -> None:
    ws = _weights(seed)
    all_nodes, all_inits = [], []
    prev = "input"
    for k, (cin, cout, _, side) in enumerate(STAGES):
        last = k == len(STAGES) - 1
        feats = "features" if not last else "last_features"
        nodes, inits = _stage_nodes(k, "input", feats, "logits", ws[k])
        outs = [_tensor("logits", ["batch", NUM_CLASSES])]
        if not last:
            outs.insert(0, _tensor("features", ["batch", cout, _side(k), _side(k)]))
        _save(
            nodes,
            inits,
            [_tensor("input", ["batch", cin, side, side])],
            outs,
            model_dir / f"stage_{k}.onnx",
        )
        nodes, inits = _stage_nodes(k, prev, f"f{k}", "logits", ws[k])
        all_nodes += nodes if last else nodes[:2]  # an auxiliary head: not in the backbone
        all_inits += inits if last else inits[:2]
        prev = f"f{k}"
    outs = [_tensor("logits", ["batch", NUM_CLASSES])]
    _save(
        all_nodes,
        all_inits,
        [_tensor("input", ["batch", 1, 28, 28])],
        outs,
        model_dir / "full.onnx",
    )


def stage_flops() -> list[tuple[int, int]]:
    """(body, head) FLOPs per stage, 2 x MACs."""
    out = []
    for k, (cin, cout, _, _) in enumerate(STAGES):
        out.append((2 * cout * _side(k) ** 2 * cin * 9, 2 * cout * NUM_CLASSES))
    return out


def fixture_pixels(n: int, seed: int = 1) -> np.ndarray:
    """n varied grey images, uint8 [n, 28, 28]: brightness, gradients, blobs and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    imgs = []
    for _ in range(n):
        a, b, c = rng.uniform(-1, 1, 3)
        cy, cx = rng.uniform(0.2, 0.8, 2)
        r = rng.uniform(0.05, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2) * rng.uniform(-1, 1)
        img = 0.5 + 0.4 * (a * xx + b * yy + c * xx * yy) / 2 + 0.5 * blob
        img += rng.normal(0, rng.uniform(0, 0.2), img.shape)
        imgs.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(imgs)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], as the manifest's preprocessing says."""
    return ((pixels.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def stage_probs(model_dir: Path, x: np.ndarray) -> list[np.ndarray]:
    """Run the stage graphs one after another with plain sess.run: float64 softmax per exit."""
    probs, h = [], x
    for k in range(len(STAGES)):
        sess = ort.InferenceSession(
            str(model_dir / f"stage_{k}.onnx"), providers=["CPUExecutionProvider"]
        )
        outs = sess.run(None, {"input": h})
        probs.append(softmax(outs[-1]))
        h = outs[0]
    return probs


def _between(conf: np.ndarray, q: float) -> float:
    """A threshold halfway between two neighbouring confidences near quantile q."""
    s = np.sort(conf)
    i = int(np.clip(round(q * len(s)), 1, len(s) - 1))
    return float((s[i - 1] + s[i]) / 2)


def build_tiny_model(
    model_dir: Path, name: str = "tiny", seed: int = 0, version: str = "0.0.1-test"
) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    write_graphs(model_dir, seed)
    probs = stage_probs(model_dir, normalise(fixture_pixels(64)))
    t0 = _between(probs[0].max(axis=1), 0.6)
    rest = probs[1].max(axis=1)[probs[0].max(axis=1) < t0]
    thresholds = [t0, _between(rest, 0.5), 0.0]
    flops = stage_flops()
    cum = np.cumsum([b + h for b, h in flops]).tolist()
    stages = []
    for k, (cin, cout, _, side) in enumerate(STAGES):
        last = k == len(STAGES) - 1
        f = f"stage_{k}.onnx"
        stages.append(
            StageSpec(
                index=k,
                file=f,
                sha256=sha256_file(model_dir / f),
                input=TensorSpec(name="input", shape=["batch", cin, side, side]),
                features=None
                if last
                else TensorSpec(name="features", shape=["batch", cout, _side(k), _side(k)]),
                logits=TensorSpec(name="logits", shape=["batch", NUM_CLASSES]),
                flops_body=flops[k][0],
                flops_exit=flops[k][1],
            )
        )
    point = CalibrationPoint(thresholds=thresholds, balanced_accuracy=0.5, flops_ratio=0.6)
    manifest = Manifest(
        name=name,
        version=version,
        class_names=CLASS_NAMES,
        preprocessing=Preprocessing(channels=1, height=28, width=28, mean=[MEAN], std=[STD]),
        stages=stages,
        exits=[
            ExitSpec(index=k, stage=k, threshold=thresholds[k], cumulative_flops=int(cum[k]))
            for k in range(len(STAGES))
        ],
        full_model=FileRef(file="full.onnx", sha256=sha256_file(model_dir / "full.onnx")),
        flops_full=sum(b for b, _ in flops) + flops[-1][1],
        calibration=Calibration(tolerance=0.005, best=point, chosen=point),
        provenance=Provenance(
            dataset="synthetic", method="fixture", loss="none", epochs=0, architecture="tiny-cnn"
        ),
    )
    curve = [{"thresholds": thresholds, "balanced_accuracy": 0.5, "flops_ratio": 0.6}]
    (model_dir / "calibration.json").write_text(json.dumps({"curve": curve}))
    write_manifest(manifest, model_dir)
    # The audit's reference, measured on the fixture images the thresholds were set on.
    agreement = Agreement(
        split="fixture", images=64, thresholds=thresholds, exits=exit_agreement(probs, thresholds)
    )
    write_agreement(agreement, model_dir)
    return model_dir
