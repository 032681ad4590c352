"""`elf-export quantize`: parser and summary (model_export/cli.py runs it).

elf-export quantize --model-dir models/NAME --out models/NAME-int8 [--precision int8-u8|int8]
    [--calibration-images 256] [--min-agreement 0.95] [--tolerance T]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from elf_core.manifest import CalibrationPoint
from model_export.quantize.pipeline import MIN_AGREEMENT, QuantizeConfig, QuantizeResult
from model_export.quantize.stages import PRECISIONS
from training.cli_errors import OneLineParser, add_log_level, fraction, model_name, positive_int


def quantize_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="elf-export quantize",
        description="Write a NEW model directory whose stage graphs are int8 (static QDQ, "
        "activation ranges from training images), with exit thresholds chosen again on "
        "validation; the source directory is not modified and --out must not exist.",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="float32 model directory")
    p.add_argument("--out", type=Path, required=True, help="new model directory (must not exist)")
    p.add_argument(
        "--name", type=model_name, help="model name (default: the --out directory's name)"
    )
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="int8-u8",
                   help="int8-u8 (default): uint8 activations, 7-bit weights, fast on x86 "
                   "without VNNI; int8: int8 activations (for VNNI / ARM)")  # fmt: skip
    p.add_argument("--calibration-images", type=positive_int, default=256,
                   help="training images that set the activation ranges (default 256)")  # fmt: skip
    p.add_argument("--min-agreement", type=fraction, default=MIN_AGREEMENT,
                   help="fail unless the final exit gives the float32 model's class on at least "
                   f"this fraction of validation images (default {MIN_AGREEMENT})")  # fmt: skip
    p.add_argument("--tolerance", type=fraction,
                   help="threshold choice's tolerance (default: the source's; its tail "
                   "protection is kept)")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime device")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    add_log_level(p)
    return p


def quantize_config(a: argparse.Namespace, command: str) -> QuantizeConfig:
    return QuantizeConfig(
        out=a.out,
        precision=a.precision,
        calibration_images=a.calibration_images,
        min_agreement=a.min_agreement,
        name=a.name,
        tolerance=a.tolerance,
        device=a.device,
        batch_size=a.batch_size,
        progress=not a.no_progress,
        command=command,
    )


def _point(p: CalibrationPoint | None) -> str:
    if p is None:
        return "-"
    return f"{100 * p.balanced_accuracy:.2f}% at {100 * (1 - p.flops_ratio):.1f}% FLOPs saved"


def quantize_summary(res: QuantizeResult) -> str:
    """Agreement, then balanced top-1 and FLOPs saved of both directories at their thresholds."""
    q = res.manifest.provenance.quantization
    assert q is not None  # quantize_model records it
    src, dst = res.source.calibration, res.manifest.calibration
    prec = q.precision
    lines = [
        f"agreement with {q.source} on validation: final exit {100 * q.final_agreement:.2f}%, "
        f"served answers {100 * q.served_agreement:.2f}%",
        f"{'':12}{'float32 (source)':>36}  {prec + ' (new)':>36}",
    ]
    for split, a, b in (
        ("validation", src.chosen if src else None, dst.chosen if dst else None),
        ("test", src.test if src else None, dst.test if dst else None),
    ):
        lines.append(f"{split:12}{_point(a):>36}  {_point(b):>36}")
    return "\n".join(lines)
