"""Final metrics (per exit, at fixed and at calibrated thresholds) and the per-class plot.

The exit rule, FLOPs accounting, accuracy and threshold calibration come from elf_core (numpy
only), so training, export and the server agree on what an exit decision is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elf_core import flops
from elf_core.accuracy import class_groups, summarize
from elf_core.calibration import CurvePoint, calibrate
from elf_core.exits import early_exit


def operating_point(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    thresholds: Sequence[float],
    *,
    cum_flops: Sequence[int],
    full_flops: int,
    groups: dict[str, list[int]],
) -> dict[str, Any]:
    """Early-exit inference at per-exit thresholds: accuracy, exit distribution, expected FLOPs."""
    pred, idx = early_exit(probs, thresholds)
    expected = flops.expected_flops(idx, cum_flops)
    return {
        "thresholds": [float(t) for t in thresholds],
        **summarize(pred, labels, groups, probs[0].shape[1]),
        "exit_rates": flops.exit_rates(idx, len(probs)),
        "expected_flops": expected,
        "flops_ratio": expected / full_flops,
        "flops_saved": 1.0 - expected / full_flops,
    }


def _point_summary(p: CurvePoint) -> dict[str, Any]:
    return {
        "thresholds": list(p.thresholds),
        "balanced_top1": p.balanced_accuracy,
        "tail": p.tail_accuracy,
        "flops_ratio": p.flops_ratio,
        "exit_rates": list(p.exit_rates),
    }


def final_metrics(
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test: tuple[Sequence[np.ndarray], np.ndarray],
    per_stage: Sequence[tuple[int, int]],
    *,
    train_class_counts: Sequence[int],
    fixed_thresholds: Sequence[float],
    tolerance: float,
) -> dict[str, Any]:
    """Everything metrics.json reports: test numbers per exit, at fixed thresholds, and at the
    thresholds calibrated on the validation split (best point, cheapest point within tolerance)."""
    groups = class_groups(train_class_counts)
    K = len(per_stage)
    cum = flops.cumulative_flops(per_stage)
    full = flops.full_flops(per_stage)
    ratio = [c / full for c in cum]
    (val_probs, val_labels), (test_probs, test_labels) = val, test
    cal = calibrate(val_probs, val_labels, ratio, tolerance, tail_classes=groups["tail"])

    def at(thresholds: Sequence[float]) -> dict[str, Any]:
        return operating_point(
            test_probs, test_labels, thresholds, cum_flops=cum, full_flops=full, groups=groups
        )

    num_classes = test_probs[0].shape[1]
    return {
        "groups": groups,
        "train_class_counts": list(train_class_counts),
        "flops": {"per_stage": [list(s) for s in per_stage], "cumulative": cum, "full": full},
        "test": {
            "exits": [
                summarize(test_probs[k].argmax(1), test_labels, groups, num_classes)
                for k in range(K)
            ],
            "fixed_thresholds": {f"{t:g}": at([t] * (K - 1)) for t in fixed_thresholds},
            "calibrated_best": at(cal.best.thresholds),
            "calibrated_chosen": at(cal.chosen.thresholds),
        },
        "val": {
            "exits": [
                summarize(val_probs[k].argmax(1), val_labels, groups, num_classes) for k in range(K)
            ],
            "calibration": {
                "tolerance": tolerance,
                "best": _point_summary(cal.best),
                "chosen": _point_summary(cal.chosen),
                "final_exit_only": _point_summary(cal.final_exit_only),
                "pareto": [_point_summary(p) for p in cal.pareto],
            },
        },
    }


def plot_per_class(metrics: dict[str, Any], path: Path) -> None:
    """Per-class test accuracy against training class size: one line per exit, plus the
    calibrated early-exit operating point."""
    # Imported on use: metrics without a plot need no matplotlib.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    counts = np.asarray(metrics["train_class_counts"])
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    exits = metrics["test"]["exits"]
    for k, summary in enumerate(exits):
        acc = np.asarray(summary["per_class"], dtype=np.float64)[order]
        label = f"exit {k} alone ({summary['balanced_top1']:.1%})"
        ax.plot(counts[order], acc, marker="o", label=label)
    chosen = metrics["test"]["calibrated_chosen"]
    ax.plot(
        counts[order],
        np.asarray(chosen["per_class"], dtype=np.float64)[order],
        "k--",
        marker="s",
        label=f"early exit, calibrated ({chosen['balanced_top1']:.1%}, "
        f"{chosen['flops_saved']:.0%} FLOPs saved)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class")
    ax.set_title("Per-class accuracy against training class size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
