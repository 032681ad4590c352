"""One small, committed result file per finished (row, seed) of the accuracy benchmark.

`collect` turns a training run's directory (metrics.json, config.json, predictions.npz) into
bench/results/accuracy/<row>-s<seed>.json: the numbers the report needs, the elf-train command and
the commit. The report is built from these files alone, so a benchmark can continue on another
machine and a finished run is never lost with its (uncommitted) run directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine
from elf_core.calibration import calibrate
from training.evaluate import operating_point

log = logging.getLogger("bench.accuracy")

SCHEMA = "elf-bench-accuracy-run/1"
GROUPS = ("head", "middle", "tail")
TAIL_TOLERANCES = (0.0, 0.005, 0.01)  # tail-protected calibration points reported per run


def result_path(results_dir: Path, row: str, seed: int) -> Path:
    return results_dir / f"{row}-s{seed}.json"


def _groups(summary: dict[str, Any]) -> dict[str, Any]:
    """balanced top-1 and the head / middle / tail thirds of one metrics.json summary."""
    return {"balanced_top1": summary["balanced_top1"], **{g: summary["groups"][g] for g in GROUPS}}


def _test_point(p: dict[str, Any]) -> dict[str, Any]:
    return {**_groups(p), "flops_saved": p["flops_saved"], "thresholds": p["thresholds"],
            "exit_rates": p["exit_rates"]}  # fmt: skip


def _val_point(p: dict[str, Any]) -> dict[str, Any]:
    return {"balanced_top1": p["balanced_top1"], "tail": p["tail"],
            "flops_saved": 1.0 - p["flops_ratio"], "thresholds": p["thresholds"]}  # fmt: skip


def tail_protected(
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test: tuple[Sequence[np.ndarray], np.ndarray],
    flops: dict[str, Any],
    groups: dict[str, list[int]],
    tolerance: float,
    *,
    tail_tolerances: Sequence[float] = TAIL_TOLERANCES,
) -> list[dict[str, Any]]:
    """Plain calibration (tail_tolerance None) and tail-protected calibration at each tolerance:
    thresholds chosen on validation, then measured once on test. probs: [K] arrays [N, C]."""
    cum, full = flops["cumulative"], flops["full"]
    ratio = [c / full for c in cum]
    out: list[dict[str, Any]] = []
    for x in tail_tolerances:
        res = calibrate(*val, ratio, tolerance, tail_classes=groups["tail"], tail_tolerance=x)
        assert res.protection is not None
        points = [(None, res.protection.plain_chosen)] if not out else []
        for tt, p in [*points, (x, res.chosen)]:
            at = operating_point(*test, p.thresholds, cum_flops=cum, full_flops=full, groups=groups)
            out.append({
                "tail_tolerance": tt,
                "val": {"balanced_top1": p.balanced_accuracy, "tail": p.tail_accuracy,
                        "flops_saved": 1.0 - p.flops_ratio, "thresholds": list(p.thresholds)},
                "test": {**_groups(at), "flops_saved": at["flops_saved"],
                         "exit_rates": at["exit_rates"]},
            })  # fmt: skip
    return out


def _predictions(run: Path) -> tuple[Any, Any] | None:
    path = run / "predictions.npz"
    if not path.is_file():
        return None
    z = np.load(path)
    k = sum(1 for name in z.files if name.startswith("val_probs_"))
    val = ([z[f"val_probs_{i}"] for i in range(k)], z["val_labels"])
    return val, ([z[f"test_probs_{i}"] for i in range(k)], z["test_labels"])


def from_run(
    run: Path, row: str, row_args: str, *, command: str, commit: str | None
) -> dict[str, Any]:
    """The result file of one finished run directory. `command`/`commit` are used only when
    the run did not record its own (runs made before elf-train recorded them)."""
    m = json.loads((run / "metrics.json").read_text())
    recorded = m.get("command")
    cal = m["val"]["calibration"]
    result: dict[str, Any] = {
        "schema": SCHEMA, "row": row, "seed": m["seed"], "epochs": m["epochs"],
        "row_args": row_args, "dataset": m["dataset"], "arch": m["arch"],
        "method": m["method"], "loss": m["loss"],
        "train_class_counts": m["train_class_counts"], "groups": m["groups"],
        "command": recorded or command,
        "command_source": "recorded by elf-train" if recorded else "reconstructed from the row",
        "commit": m.get("commit") or commit,
        # where it was collected: normally where it trained, in the same command
        "hardware_line": machine.hardware_line(machine.hardware()),
        "finished": datetime.fromtimestamp((run / "metrics.json").stat().st_mtime, UTC)
        .isoformat(timespec="seconds"),
        "collected": datetime.now(UTC).isoformat(timespec="seconds"),
        "test": {
            "exits": [_groups(e) for e in m["test"]["exits"]],
            "best": _test_point(m["test"]["calibrated_best"]),
            "chosen": _test_point(m["test"]["calibrated_chosen"]),
        },
        "val": {
            "exits": [e["balanced_top1"] for e in m["val"]["exits"]],
            "tolerance": cal["tolerance"],
            "best": _val_point(cal["best"]),
            "chosen": _val_point(cal["chosen"]),
        },
        "tail_protected": [],
    }  # fmt: skip
    preds = _predictions(run)
    if preds is not None:
        result["tail_protected"] = tail_protected(*preds, m["flops"], m["groups"], cal["tolerance"])
    return result


def write_result(results_dir: Path, result: dict[str, Any]) -> Path:
    """Write (or keep: an unchanged result is not rewritten, so collecting again is no diff)."""
    path = result_path(results_dir, result["row"], result["seed"])
    if path.is_file():
        old = json.loads(path.read_text())
        if {**old, "collected": None} == {**result, "collected": None}:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every result file, in file-name order; a file of another schema is an error."""
    out = []
    for path in sorted(results_dir.glob("*-s*.json")):
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a result file of schema {SCHEMA}")
        out.append(data)
    return out
