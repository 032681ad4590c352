"""The Fashion-MNIST-LT comparison of bench.retrofit: a retrofitted model against networks
trained end to end with exits (rows of bench.accuracy), on test with thresholds from validation.

Every row has the best point (validation's best balanced top-1) and the cheapest point within
the tolerance (0.5 points) of it, as balanced top-1, tail-third top-1 and FLOPs saved against
the backbone alone; and the wall time of its path: the retrofit's (export + retrofit of an
already trained network) or the training's (sum of the trainer's per-epoch train_seconds).
The result is a seed's record of an accuracy row (bench.accuracy_runs), the whole kept in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.accuracy_runs import SCHEMA, result_path, write_result
from elf_core.calibration import DEFAULT_TOLERANCE

FIELDS = ("balanced_top1", "tail", "flops_saved")


def calibration_point(p: dict[str, Any]) -> dict[str, float]:
    """A calibration.json point in the accuracy rows' terms."""
    values = (p["balanced_accuracy"], p["tail_accuracy"], 1.0 - p["flops_ratio"])
    return dict(zip(FIELDS, values, strict=True))


def training_seconds(run_dir: Path) -> float | None:
    """Sum of the trainer's per-epoch train_seconds (metrics.jsonl); None without the file."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return round(sum(float(json.loads(line)["train_seconds"]) for line in lines if line), 1)


def accuracy_row(spec: str, results_dir: Path) -> dict[str, Any]:
    """spec: ROW:SEED (a record of results_dir/ROW.json), optionally =RUN_DIR for the training
    time."""
    name, _, run_dir = spec.partition("=")
    row, _, seed = name.partition(":")
    path = result_path(results_dir, row)
    d = json.loads(path.read_text(encoding="utf-8"))["seeds"][seed]
    return {
        "row": d["row"],
        "seed": d["seed"],
        "source": f"{path} seed {seed}",
        "test_best": {k: d["test"]["best"][k] for k in FIELDS},
        "test_chosen": {k: d["test"]["chosen"][k] for k in FIELDS},
        "seconds": training_seconds(Path(run_dir)) if run_dir else None,
        "seconds_measured": "training (sum of train_seconds)" if run_dir else None,
    }


def save_row(
    results_dir: Path,
    result: dict[str, Any],
    row: str,
    of: str,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Path:
    """The fmnist result as a seed's record of the accuracy row `row` (a retrofit of row `of`,
    calibrated at `tolerance`); the whole result is kept under "retrofit" (the retrofit page is
    built from it)."""
    variant: dict[str, Any] = {"of": of, "adds": "retrofit"}
    if tolerance != DEFAULT_TOLERANCE:
        variant["tolerance"] = tolerance
    mine = result["rows"][0]  # the retrofitted network; the others are for comparison
    return write_result(results_dir, {
        "schema": SCHEMA, "row": row, "seed": mine["seed"],
        "variant": variant, "command": result["command"],
        "command_source": "recorded by bench retrofit", "commit": result["commit"],
        "test": {"best": mine["test_best"], "chosen": mine["test_chosen"]},
        "retrofit": result,
    })  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per row, best and cheapest-within-0.5-points on test, and the path's time."""
    head = (
        "| model | best: bal. top-1 / tail / FLOPs saved | within 0.5 pt: bal. top-1 / tail / "
        "FLOPs saved | wall time |\n|---|---|---|---|"
    )

    def cell(p: dict[str, float]) -> str:
        return " / ".join(f"{100 * p[k]:.1f}%" for k in FIELDS)

    lines = [head]
    for r in rows:
        secs = f"{r['seconds'] / 60:.0f} min ({r['seconds_measured']})" if r["seconds"] else "-"
        name = f"{r['row']} seed {r['seed']}"
        lines.append(f"| {name} | {cell(r['test_best'])} | {cell(r['test_chosen'])} | {secs} |")
    return "\n".join(lines)
