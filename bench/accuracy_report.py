"""Tables of the accuracy benchmark (markdown + JSON) from the runs' metrics.json files."""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GROUPS = ("head", "middle", "tail")


def _stat(values: Sequence[float | None]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def _point(runs: list[dict[str, Any]], get: Any) -> dict[str, Any]:
    """Mean/std over seeds of one operating point's balanced top-1, groups and FLOPs saved."""
    points = [get(r) for r in runs]
    out: dict[str, Any] = {"balanced_top1": _stat([p["balanced_top1"] for p in points])}
    for g in GROUPS:
        out[g] = _stat([p["groups"].get(g) for p in points])
    if "flops_saved" in points[0]:
        out["flops_saved"] = _stat([p["flops_saved"] for p in points])
        out["thresholds"] = [p["thresholds"] for p in points]
        out["exit_rates"] = [p["exit_rates"] for p in points]
    return out


def summarize_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    K = len(runs[0]["test"]["exits"])
    return {
        "seeds": [r["seed"] for r in runs],
        "method": runs[0]["method"],
        "loss": runs[0]["loss"],
        "exits": [_point(runs, lambda r, k=k: r["test"]["exits"][k]) for k in range(K)],
        "early_exit_best": _point(runs, lambda r: r["test"]["calibrated_best"]),
        "early_exit_chosen": _point(runs, lambda r: r["test"]["calibrated_chosen"]),
        "val_best_balanced_top1": _stat(
            [r["val"]["calibration"]["best"]["balanced_top1"] for r in runs]
        ),
    }


def _pct(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    text = f"{100 * s['mean']:.1f}"
    return text + (f" ± {100 * s['std']:.1f}" if s["n"] > 1 else "")


def _hmt(p: dict[str, Any]) -> str:
    return " / ".join(_pct(p[g]) for g in GROUPS)


def _tables(summary: dict[str, dict[str, Any]]) -> list[str]:
    K = max(len(s["exits"]) for s in summary.values())
    exit_cols = [f"exit {k} alone" for k in range(K - 1)] + ["final exit alone"]
    head = ["row", "seeds", *exit_cols, "early exit, best", "FLOPs saved", "early exit, ≤0.5 pt",
            "FLOPs saved"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, s in summary.items():
        best, chosen = s["early_exit_best"], s["early_exit_chosen"]
        cells = [row, str(len(s["seeds"])), *(_pct(e["balanced_top1"]) for e in s["exits"]),
                 _pct(best["balanced_top1"]), _pct(best["flops_saved"]),
                 _pct(chosen["balanced_top1"]), _pct(chosen["flops_saved"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Head / middle / tail thirds of the classes (by training frequency), %:", ""]
    head = ["row", *exit_cols, "early exit, best", "early exit, ≤0.5 pt"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, s in summary.items():
        cells = [row, *(_hmt(e) for e in s["exits"])]
        cells += [_hmt(s["early_exit_best"]), _hmt(s["early_exit_chosen"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_report(
    stem: Path,
    results: dict[str, list[dict[str, Any]]],
    rows: dict[str, str],
    *,
    command: str,
    epochs: int,
    seeds: Sequence[int],
) -> None:
    """Writes stem.md and stem.json."""
    summary = {row: summarize_row(runs) for row, runs in results.items()}
    first = next(iter(results.values()))[0]
    meta = {
        "command": command,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "dataset": first["dataset"],
        "arch": first["arch"],
        "epochs": epochs,
        "seeds": list(seeds),
        "train_class_counts": first["train_class_counts"],
        "groups": first["groups"],
        "row_args": {r: rows[r] for r in results},
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": summary}, indent=1))
    md = [
        f"# Accuracy: ELF and baselines on {meta['dataset']} ({meta['arch']})",
        "",
        f"Command: `{command}`  ",
        f"Epochs per row: {epochs}; seeds: {list(seeds)} (mean ± sample std over seeds where "
        f"more than one); commit {meta['commit']}; {meta['date']}.  ",
        f"Training images per class: {meta['train_class_counts']}; groups: {meta['groups']}.",
        "",
        "Balanced top-1 (%) on the balanced test set. 'Early exit' thresholds are chosen on the",
        "validation split (never on test): 'best' is the best point of the threshold curve,",
        "'≤0.5 pt' the cheapest point within 0.5 points of it; FLOPs saved is 1 - expected",
        "executed / full backbone FLOPs (exit heads included in executed). An ELF network is",
        "judged by its early-exit numbers: its final classifier alone sees only hard examples.",
        "",
        *_tables(summary),
        "",
        "Row arguments (elf-train):",
        "",
        *(f"- `{r}`: `{a}`" for r, a in meta["row_args"].items()),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(md))
