"""Calibration outputs: calibration.json and .png, manifest entries, the summary table."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elf_core.calibration import CalibrationResult, CurvePoint, pareto_front
from elf_core.exits import exit_thresholds
from elf_core.manifest import Calibration, CalibrationPoint, ExitSpec

CURVE_FILE = "calibration.json"
PLOT_FILE = "calibration.png"


@dataclass(frozen=True)
class CalibrationOutcome:
    """Thresholds chosen on the validation split, and the same thresholds measured on test."""

    val: CalibrationResult
    test_chosen: CurvePoint
    test_best: CurvePoint
    test_final_exit_only: CurvePoint
    cumulative_flops: list[int]  # per exit, per image
    flops_full: int
    tail_classes: list[int]
    val_images: int
    test_images: int


def point_dict(p: CurvePoint) -> dict[str, Any]:
    """Metrics rounded to 6 decimals for the file; thresholds exact (they are compared with >=)."""
    d = dataclasses.asdict(p)
    for key, value in d.items():
        if key != "thresholds":
            d[key] = _round(value)
    return d


def _round(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [_round(x) for x in v]
    return round(v, 6) if isinstance(v, float) else v


def manifest_point(p: CurvePoint) -> CalibrationPoint:
    return CalibrationPoint(
        thresholds=list(p.thresholds),
        balanced_accuracy=p.balanced_accuracy,
        tail_accuracy=p.tail_accuracy,
        accuracy=p.accuracy,
        flops_ratio=p.flops_ratio,
        exit_rates=list(p.exit_rates),
    )


def manifest_calibration(o: CalibrationOutcome) -> Calibration:
    return Calibration(
        split="validation",
        metric="balanced_accuracy",
        tolerance=o.val.tolerance,
        best=manifest_point(o.val.best),
        chosen=manifest_point(o.val.chosen),
        final_exit_only=manifest_point(o.val.final_exit_only),
        test=manifest_point(o.test_chosen),
        test_final_exit_only=manifest_point(o.test_final_exit_only),
        curve_file=CURVE_FILE,
    )


def exit_specs(thresholds: Sequence[float], cumulative_flops: Sequence[int]) -> list[ExitSpec]:
    """One ExitSpec per exit; the last exit always answers, so its threshold is 0."""
    full = exit_thresholds(thresholds, len(cumulative_flops))
    return [
        ExitSpec(index=i, stage=i, threshold=float(t), cumulative_flops=int(c))
        for i, (t, c) in enumerate(zip(full, cumulative_flops, strict=True))
    ]


def curve_json(o: CalibrationOutcome) -> dict[str, Any]:
    v = o.val
    return {
        "split": "validation",
        "metric": "balanced_accuracy",
        "tolerance": v.tolerance,
        "images": o.val_images,
        "cumulative_flops": o.cumulative_flops,
        "flops_full": o.flops_full,
        "cumulative_flops_ratio": [c / o.flops_full for c in o.cumulative_flops],
        "tail_classes": o.tail_classes,
        "best": point_dict(v.best),
        "chosen": point_dict(v.chosen),
        "final_exit_only": point_dict(v.final_exit_only),
        "pareto": [point_dict(p) for p in v.pareto],
        "curve": [point_dict(p) for p in v.curve],
        "test": {
            "note": "test set, measured once with the thresholds fixed on the validation split",
            "images": o.test_images,
            "chosen": point_dict(o.test_chosen),
            "best": point_dict(o.test_best),
            "final_exit_only": point_dict(o.test_final_exit_only),
        },
    }


def write_curve(o: CalibrationOutcome, model_dir: Path) -> Path:
    """Indented summary; the long point lists one compact point per line."""
    data = curve_json(o)
    lists = ("pareto", "curve")
    text = json.dumps({k: v for k, v in data.items() if k not in lists}, indent=1)[:-2]
    for key in lists:
        rows = ",\n  ".join(json.dumps(p, separators=(",", ":")) for p in data[key])
        text += f',\n "{key}": [\n  {rows}\n ]'
    path = model_dir / CURVE_FILE
    path.write_text(text + "\n}\n", encoding="utf-8")
    return path


def write_plot(o: CalibrationOutcome, model_dir: Path, title: str) -> Path:
    """Balanced accuracy against expected FLOPs ratio on the validation split."""
    import matplotlib  # noqa: PLC0415  (heavy; only needed here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    v = o.val
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(
        [p.flops_ratio for p in v.curve],
        [100 * p.balanced_accuracy for p in v.curve],
        s=4,
        color="0.75",
        label="threshold grid",
    )
    front = pareto_front(v.curve)
    ax.plot(
        [p.flops_ratio for p in front],
        [100 * p.balanced_accuracy for p in front],
        color="tab:blue",
        label="Pareto front",
    )
    marks = (
        (v.best, "tab:green", "o", "best"),
        (v.chosen, "tab:red", "*", f"chosen (tolerance {100 * v.tolerance:g} pt)"),
        (v.final_exit_only, "black", "X", "full model (final exit alone)"),
    )
    for p, color, marker, label in marks:
        ax.scatter(
            [p.flops_ratio],
            [100 * p.balanced_accuracy],
            s=90,
            color=color,
            marker=marker,
            label=f"{label}: {100 * p.balanced_accuracy:.2f}% at {p.flops_ratio:.3f}",
            zorder=3,
        )
    ax.set_xlabel("expected FLOPs / backbone FLOPs")
    ax.set_ylabel("balanced accuracy (%)")
    ax.set_title(f"{title}: validation split ({o.val_images} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = model_dir / PLOT_FILE
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_table(o: CalibrationOutcome) -> str:
    """Per exit: threshold, exit rate, accuracy, cumulative FLOPs, on validation and test."""
    lines = []
    for split, p, n in (
        ("validation", o.val.chosen, o.val_images),
        ("test", o.test_chosen, o.test_images),
    ):
        lines.append(f"{split} ({n} images), chosen thresholds:")
        lines.append(
            f"  {'exit':>4} {'threshold':>9} {'exit rate':>9} {'accuracy':>8} {'cum FLOPs':>12}"
        )
        for k, (t, rate, acc) in enumerate(
            zip(p.thresholds, p.exit_rates, p.exit_accuracy, strict=True)
        ):
            acc_s = f"{100 * acc:7.2f}%" if acc is not None else f"{'-':>8}"
            t_s = f"{t:9.4f}" if k < len(p.thresholds) - 1 else f"{'(final)':>9}"
            lines.append(f"  {k:>4} {t_s} {100 * rate:8.2f}% {acc_s} {o.cumulative_flops[k]:>12,}")
        final = o.val.final_exit_only if split == "validation" else o.test_final_exit_only
        lines.append(
            f"  balanced acc {100 * p.balanced_accuracy:.2f}% (final exit alone "
            f"{100 * final.balanced_accuracy:.2f}%), tail {_pct(p.tail_accuracy)}, "
            f"FLOPs ratio {p.flops_ratio:.3f} (saved {100 * (1 - p.flops_ratio):.1f}%)"
        )
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"
