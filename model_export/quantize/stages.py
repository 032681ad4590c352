"""Reduced-precision variants of stage graphs (int8, fp16), keeping the float32 interface.

Every variant keeps a stage graph's interface: float32 `input`, float32 `features` and `logits`,
so the server chains a quantized model directory's stages unchanged.

  int8       static QDQ quantisation (onnxruntime.quantization.quantize_static): int8
             activations and int8 weights per output channel (S8S8, ORT's default), MinMax
             ranges from calibration images; the graphs first go through quant_pre_process
             (shape inference, BatchNorm folded into Conv), as ORT's quantisation guide asks
  int8-u8    the same with uint8 activations and 7-bit weights (U8S8 with reduce_range: the
             guide's choice on x86 without VNNI, where S8S8 runs a slow path and full-range
             U8S8 saturates in the 16-bit intermediate sums)
  int8-dyn   dynamic quantisation (int8 weights, activation ranges per call)
  fp16       onnxruntime.transformers.float16, Cast nodes at the float32 inputs and outputs

Stage k is calibrated on the float32 features that the float32 stages 0..k-1 make of the
calibration images (`stage_inputs`). Used by `elf-export quantize` and bench/stage_variants.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

CALIB_BATCH = 8  # rows per calibration call


class ArrayReader:
    """onnxruntime.quantization's CalibrationDataReader over one array, in batches of `batch`."""

    def __init__(self, x: np.ndarray, batch: int = CALIB_BATCH) -> None:
        self.batches = [x[i : i + batch] for i in range(0, len(x), batch)]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"input": self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def stage_inputs(paths: Sequence[Path], x: np.ndarray) -> list[np.ndarray]:
    """Stage k's float32 input for images x [N, C, H, W]: x, then stage 0..K-2's features."""
    inputs = [x]
    for path in paths[:-1]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        parts = [
            sess.run(["features"], {"input": inputs[-1][i : i + 32]})[0]
            for i in range(0, len(x), 32)
        ]
        inputs.append(np.concatenate(parts))
    return inputs


def to_fp16(src: Path, dst: Path, calib: np.ndarray) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    del calib
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path, calib: np.ndarray, unsigned: bool = False) -> None:
    """Static QDQ int8 of one stage graph, activation ranges (MinMax) from calib [M, ...]."""
    from onnxruntime import quantization as q  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(src), str(pre))
        q.quantize_static(
            str(pre),
            str(dst),
            ArrayReader(calib),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=unsigned,
            activation_type=q.QuantType.QUInt8 if unsigned else q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )  # every calibration batch's tensors are kept until the end: few images for big ones


def to_int8_dynamic(src: Path, dst: Path, calib: np.ndarray) -> None:
    from onnxruntime import quantization as q  # noqa: PLC0415

    del calib
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(src), str(pre))
        q.quantize_dynamic(str(pre), str(dst), weight_type=q.QuantType.QInt8, per_channel=True)


BUILDERS: dict[str, Callable[[Path, Path, np.ndarray], None]] = {
    "fp16": to_fp16,
    "int8": to_int8,
    "int8-u8": partial(to_int8, unsigned=True),
    "int8-dyn": to_int8_dynamic,
}

# What `elf-export quantize` offers, with the method recorded in the manifest's provenance.
PRECISIONS: dict[str, str] = {
    "int8-u8": "static QDQ, uint8 activations (MinMax), int8 per-channel weights, reduce_range",
    "int8": "static QDQ, int8 activations (MinMax), int8 per-channel weights",
}


def quantize_stages(
    precision: str, srcs: Sequence[Path], dsts: Sequence[Path], calib: np.ndarray
) -> None:
    """Write each src stage graph's `precision` variant to its dst; calib: normalized float32
    images [M, C, H, W], pushed through the float32 stages to calibrate the later ones."""
    build = BUILDERS[precision]
    for src, dst, x in zip(srcs, dsts, stage_inputs(srcs, calib), strict=True):
        build(src, dst, x)
