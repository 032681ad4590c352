"""Reduced-precision variants of a model directory's stage graphs, cached on disk for the benches.

VARIANTS: fp32 (the directory's own graphs), and model_export.quantize.stages' builders (fp16, int8,
int8-u8, int8-dyn; described there, shared with `elf-export quantize`). Every variant keeps the
stage graph's float32 interface, so the server's runner could chain it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_export.quantize.stages import BUILDERS, stage_inputs

log = logging.getLogger("bench.stage_variants")

VARIANTS = ("fp32", "fp16", "int8", "int8-u8", "int8-dyn")


def build_variant(
    variant: str, paths: Sequence[Path], calib: np.ndarray, out: Path
) -> list[Path] | str:
    """The variant's stage graphs under out/ (built once), or why they could not be built or
    loaded (the error's first line): a variant the CPU provider cannot run is a result too."""
    if variant == "fp32":
        return list(paths)
    out.mkdir(parents=True, exist_ok=True)
    dsts = [out / p.name for p in paths]
    try:
        if not all(d.is_file() for d in dsts):
            inputs = stage_inputs(paths, calib)
            for src, dst, x in zip(paths, dsts, inputs, strict=True):
                BUILDERS[variant](src, dst, x)
                log.info("%s: built %s", variant, dst)
        for d in dsts:  # the CPU provider must have a kernel for every node
            ort.InferenceSession(str(d), providers=["CPUExecutionProvider"])
    except Exception as exc:  # a variant that fails is a result: reported, not fatal
        log.warning("%s: %s", variant, exc)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return dsts
