"""elf-export: checkpoint -> model directory; `elf-export calibrate`: new thresholds for one.

elf-export --checkpoint runs/x/checkpoint.pt --out models/NAME [--tolerance 0.005]
elf-export calibrate --model-dir models/NAME [--tolerance 0.005] [--tail-tolerance 0.01
    [--protect-classes 7,8,9]]
elf-export retrofit --onnx MODEL.onnx --data-root DIR [--cuts auto|NAME ...] --out models/NAME
elf-export quantize --model-dir models/NAME --out models/NAME-int8 [--precision int8-u8|int8]
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from elf_core.calibration import DEFAULT_TOLERANCE, CalibrationError
from elf_core.manifest import ManifestError
from model_export.export import ExportConfig, export_checkpoint
from model_export.quantize.cli import quantize_config, quantize_parser, quantize_summary
from model_export.quantize.pipeline import QuantizeError, quantize_model
from model_export.recalibrate import recalibrate
from model_export.report import summary_table
from model_export.retrofit.cli import retrofit_config, retrofit_parser
from model_export.retrofit.cuts import RetrofitError
from model_export.retrofit.pipeline import retrofit
from model_export.verify import VerificationError
from training.checkpoint import CheckpointError
from training.cli_errors import (
    OneLineParser,
    add_log_level,
    fraction,
    model_name,
    positive_int,
    run_reporting_errors,
)
from training.data import DatasetError

# Libraries that log every optimisation pass at INFO.
_QUIET = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export")


def _classes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"class indices separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"class indices must be >= 0, got {text!r}")
    return values


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tolerance",
        type=fraction,
        default=DEFAULT_TOLERANCE,
        help="balanced accuracy the chosen point may lose against the best point (default "
        f"{DEFAULT_TOLERANCE})",
    )
    p.add_argument(
        "--tail-tolerance",
        type=fraction,
        help="tail protection: the chosen point must also keep the tail third's (or the "
        "--protect-classes') validation accuracy within this of their best (e.g. 0.01)",
    )
    p.add_argument(
        "--protect-classes",
        type=_classes,
        metavar="I,J,...",
        help="tail protection of these class indices instead of the tail third "
        "(needs --tail-tolerance)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime device")
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="images per batch in calibration"
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    add_log_level(p)


def export_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="elf-export",
        description="Export a trained ELF checkpoint to a verified, calibrated model directory. "
        "Use `elf-export calibrate --help` to recalibrate an existing one, `elf-export retrofit "
        "--help` to add early exits to an existing ONNX classifier, `elf-export quantize --help` "
        "to make an int8 copy of a model directory.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument(
        "--name", type=model_name, help="model name (default: the --out directory's name)"
    )
    p.add_argument("--version", default="1", help="model version string (default 1)")
    _common(p)
    return p


def calibrate_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="elf-export calibrate",
        description="Choose new exit thresholds for an exported model directory on its "
        "validation split; rewrites calibration.json/.png and the manifest.",
    )
    p.add_argument("--model-dir", type=Path, required=True)
    _common(p)
    return p


def _checked(parser: argparse.ArgumentParser, a: argparse.Namespace) -> argparse.Namespace:
    if a.protect_classes is not None and a.tail_tolerance is None:
        parser.error("--protect-classes needs --tail-tolerance")
    return a


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in _QUIET:
        # torch.onnx warns that torchvision (which this project does not use) is missing.
        logging.getLogger(name).setLevel(logging.ERROR)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# Failures a user can act on: reported as one line naming the file, without a traceback.
_USER_ERRORS = (
    CalibrationError,
    ManifestError,
    VerificationError,
    DatasetError,
    CheckpointError,
    OSError,
    RetrofitError,
    QuantizeError,
)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["calibrate"]:
        parser = calibrate_parser()
        a = _checked(parser, parser.parse_args(args_list[1:]))
        work = functools.partial(_calibrate, a)
    elif args_list[:1] == ["quantize"]:
        parser = quantize_parser()
        a = parser.parse_args(args_list[1:])
        work = functools.partial(_quantize, a, args_list)
    elif args_list[:1] == ["retrofit"]:
        parser = retrofit_parser(_common)
        a = _checked(parser, parser.parse_args(args_list[1:]))
        work = functools.partial(_retrofit, a, args_list)
    else:
        parser = export_parser()
        a = _checked(parser, parser.parse_args(args_list))
        work = functools.partial(_export, a, args_list)
    return run_reporting_errors(parser.prog, work, _USER_ERRORS, a.log_level == "debug")


def _export(a: argparse.Namespace, argv: list[str]) -> int:
    _setup_logging(a.log_level)
    cfg = ExportConfig(
        out=a.out,
        tolerance=a.tolerance,
        name=a.name,
        version=a.version,
        device=a.device,
        batch_size=a.batch_size,
        progress=not a.no_progress,
        command=shlex.join(["elf-export", *argv]),
        tail_tolerance=a.tail_tolerance,
        protect_classes=a.protect_classes,
    )
    res = export_checkpoint(a.checkpoint, cfg)
    f, parity = res.checks.flops, res.checks.parity
    _say(f"\nexported {res.manifest.name} v{res.manifest.version} -> {res.model_dir}")
    _say(
        f"parity vs torch on {parity.images} validation images: max abs diff "
        f"{parity.max_abs_diff:.2e} (stages {_fmt(parity.stage_max_abs_diff)}, "
        f"full {parity.full_max_abs_diff:.1e})"
    )
    _say(
        f"FLOPs per image: backbone {res.manifest.flops_full:,}; ONNX cross-check max "
        f"difference {100 * f.max_rel_diff:.3f}%"
    )
    if res.calibration is not None:
        _say(summary_table(res.calibration))
    return 0


def _calibrate(a: argparse.Namespace) -> int:
    _setup_logging(a.log_level)
    manifest, outcome = recalibrate(
        a.model_dir,
        a.tolerance,
        a.device,
        a.batch_size,
        progress=not a.no_progress,
        tail_tolerance=a.tail_tolerance,
        protect_classes=a.protect_classes,
    )
    _say(f"\nrecalibrated {manifest.name} in {a.model_dir}")
    _say(summary_table(outcome))
    return 0


def _retrofit(a: argparse.Namespace, argv: list[str]) -> int:
    _setup_logging(a.log_level)
    res = retrofit(retrofit_config(a, shlex.join(["elf-export", *argv])))
    m = res.manifest
    _say(f"\nretrofitted {m.name} v{m.version} -> {res.model_dir}")
    _say(
        "cuts: "
        + ", ".join(
            f"{c.tensor} {list(c.shape)} at {c.cumulative_flops / m.flops_full:.0%}"
            for c in res.cuts
        )
    )
    _say(
        f"chained stages vs the original on {res.parity.images} validation images: max abs "
        f"diff {res.parity.final_max_abs_diff:.2e}; exit heads vs torch "
        f"{_fmt(res.parity.head_max_abs_diff)}"
    )
    _say("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()))
    _say(summary_table(res.calibration))
    return 0


def _quantize(a: argparse.Namespace, argv: list[str]) -> int:
    _setup_logging(a.log_level)
    res = quantize_model(a.model_dir, quantize_config(a, shlex.join(["elf-export", *argv])))
    _say(f"\nquantized {res.source.name} -> {res.manifest.name} in {res.model_dir}")
    _say(quantize_summary(res))
    if res.manifest.calibration is not None:
        _say(summary_table(res.outcome))
    return 0


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.1e}" for v in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
