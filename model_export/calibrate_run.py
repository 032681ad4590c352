"""Calibration of exported stage graphs: run them in ONNX Runtime over the balanced validation
split, choose thresholds there, then measure those fixed thresholds once on the test split."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from elf_core.accuracy import class_thirds
from elf_core.calibration import CurvePoint, calibrate, evaluate_thresholds, final_exit_only
from elf_core.exits import softmax
from elf_core.provider_choice import Provider
from model_export.report import CalibrationOutcome
from model_export.runtime import StageChain, collect_logits
from training.data import DataSplits, ImageDataset

log = logging.getLogger(__name__)


def iter_batches(
    data: ImageDataset, batch_size: int, desc: str, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images [B, C, H, W], labels [B]) in order, with a tqdm bar."""
    n = len(data)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        idx = torch.arange(start, min(n, start + batch_size))
        yield data.batch(idx).numpy(), data.labels[idx].numpy()


# Softmax of every exit over a split, and its labels: ([K] arrays [N, C], [N]).
SplitProbs = tuple[list[np.ndarray], np.ndarray]


def split_probs(
    runner: StageChain,
    data: ImageDataset,
    splits: DataSplits,
    *,
    batch_size: int,
    desc: str,
    progress: bool,
) -> SplitProbs:
    """Softmax of every exit over a split: ([K] arrays [N, C], labels [N])."""
    batches = iter_batches(data, batch_size, desc, progress)
    logits, labels = collect_logits(runner, batches, splits.mean, splits.std)
    return [softmax(z) for z in logits], labels


def validation_probs(
    stage_paths: Sequence[Path],
    splits: DataSplits,
    providers: Sequence[Provider],
    *,
    batch_size: int,
    progress: bool,
    desc: str = "validation",
) -> SplitProbs:
    """split_probs of the stage graphs at `stage_paths` over splits.val."""
    runner = StageChain(stage_paths, providers)
    return split_probs(
        runner, splits.val, splits, batch_size=batch_size, desc=desc, progress=progress
    )


def run_calibration(
    stage_paths: Sequence[Path],
    splits: DataSplits,
    cumulative_flops: Sequence[int],
    flops_full: int,
    tolerance: float,
    *,
    providers: Sequence[Provider] = ("CPUExecutionProvider",),
    batch_size: int = 256,
    progress: bool = True,
    tail_tolerance: float | None = None,
    protect_classes: Sequence[int] | None = None,
    val: SplitProbs,
) -> CalibrationOutcome:
    """Choose a model directory's exit thresholds on the validation split.

    Args:
        stage_paths: The stage graphs, in order.
        splits: The data splits (validation for the choice, training counts for the tail).
        cumulative_flops: Each exit's cumulative FLOPs.
        flops_full: The backbone's FLOPs.
        tolerance: The chosen point is the cheapest whose balanced top-1 is at most this far
            below the best point of the curve.
        providers: ONNX Runtime execution providers.
        batch_size: Images per stage run.
        progress: Show progress bars.
        tail_tolerance: Also keep the tail third (or `protect_classes`) within this of its best.
        protect_classes: The classes tail protection keeps.
        val: These stage graphs' validation probabilities (shared with `agreement.json`).

    Returns:
        The trade-off curve and the chosen point.
    """
    runner = StageChain(stage_paths, providers)
    ratio = [c / flops_full for c in cumulative_flops]
    tail = class_thirds(splits.train_class_counts)[2]
    val_probs, val_labels = val
    log.info("calibrating on %d validation images (tolerance %g)", val_labels.size, tolerance)
    result = calibrate(
        val_probs,
        val_labels,
        ratio,
        tolerance,
        tail_classes=tail,
        tail_tolerance=tail_tolerance,
        protect_classes=protect_classes,
    )
    log.info(
        "validation: best %.4f at FLOPs %.3f, chosen %.4f at %.3f, final exit alone %.4f",
        result.best.balanced_accuracy,
        result.best.flops_ratio,
        result.chosen.balanced_accuracy,
        result.chosen.flops_ratio,
        result.final_exit_only.balanced_accuracy,
    )
    # The test split is touched only here, after the thresholds are fixed.
    test_probs, test_labels = split_probs(
        runner, splits.test, splits, batch_size=batch_size, desc="test", progress=progress
    )
    pro = result.protection
    kw = {"tail_classes": tail, "protect_classes": list(pro.classes) if pro else None}

    def at(p: CurvePoint) -> CurvePoint:
        return evaluate_thresholds(test_probs, test_labels, ratio, p.thresholds, **kw)

    return CalibrationOutcome(
        val=result,
        test_chosen=at(result.chosen),
        test_best=at(result.best),
        test_final_exit_only=final_exit_only(test_probs, test_labels, ratio, **kw),
        test_plain_chosen=at(pro.plain_chosen) if pro else None,
        cumulative_flops=[int(c) for c in cumulative_flops],
        flops_full=int(flops_full),
        tail_classes=tail,
        val_images=int(val_labels.size),
        test_images=int(test_labels.size),
    )
