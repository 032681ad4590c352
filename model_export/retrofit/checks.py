"""Checks a retrofitted model directory must pass before its manifest is written.

- Chained stage graphs reproduce the original graph's output on real (validation) images:
  max abs difference <= STAGE_ATOL (the segments hold the original nodes, unchanged).
- Each exported exit head gives the torch head's logits on the stage graph's own features.
- The segments' FLOPs add up to the original graph's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_export.retrofit.cuts import Classifier
from model_export.retrofit.features import session_from_model
from model_export.retrofit.heads import ExitHead
from model_export.runtime import StageChain, normalize, session
from model_export.verify import PARITY_ATOL, VerificationError
from training.data import DataSplits

STAGE_ATOL = 1e-5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityCheck:
    images: int
    final_max_abs_diff: float  # chained stages vs the original graph
    head_max_abs_diff: list[float]  # per early exit: ONNX head vs torch head


def check_stage_parity(
    clf: Classifier,
    stage_paths: Sequence[Path],
    heads: Sequence[ExitHead],
    splits: DataSplits,
    images: int,
) -> ParityCheck:
    n = min(images, len(splits.val))
    x = normalize(splits.val.batch(torch.arange(n)).numpy(), splits.mean, splits.std)
    ref = session_from_model(clf.model, ["CPUExecutionProvider"]).run(
        [clf.output_name], {clf.input_name: x}
    )[0]
    final = StageChain(stage_paths)(x)[-1]
    diff = float(np.abs(final - ref).max())
    if not diff <= STAGE_ATOL:
        raise VerificationError(
            f"{stage_paths[-1].parent}: chained stage graphs differ from {clf.path.name} by "
            f"{diff:.2e} (> {STAGE_ATOL}) on {n} validation images"
        )
    head_diffs = []
    h = x
    for k, head in enumerate(heads):
        h, logits = session(stage_paths[k], ["CPUExecutionProvider"]).run(
            ["features", "logits"], {"input": h}
        )
        with torch.no_grad():
            want = head(torch.from_numpy(h)).numpy()
        head_diffs.append(float(np.abs(logits - want).max()))
    bad = [(k, d) for k, d in enumerate(head_diffs) if not d <= PARITY_ATOL]
    if bad:
        raise VerificationError(
            f"{stage_paths[0].parent}: exported exit heads differ from torch beyond "
            f"{PARITY_ATOL} (exit, max abs diff): {bad}"
        )
    log.info("parity on %d images: stages vs original %.2e, heads %s", n, diff, head_diffs)
    return ParityCheck(n, diff, head_diffs)


def check_flops_partition(clf: Classifier, per_stage: Sequence[tuple[int, int]]) -> None:
    """Segments (the stage bodies and the final classifier) partition the original graph."""
    backbone = sum(b for b, _ in per_stage) + per_stage[-1][1]
    if backbone != clf.total_flops:
        raise VerificationError(
            f"{clf.path}: the segments' FLOPs {backbone:,} differ from the original graph's "
            f"{clf.total_flops:,}"
        )
