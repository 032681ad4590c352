"""The committed results of the accuracy benchmark: one file per row, holding all its seeds.

bench/results/accuracy/<row>.json (schema elf-bench-accuracy-row/1):

    {"schema": "elf-bench-accuracy-row/1", "row": "elf-bs", "seeds": {"0": RECORD, "1": RECORD}}

A RECORD (schema elf-bench-accuracy-run/1) is one finished (row, seed). `collect` makes it from a
training run's directory (metrics.json, config.json, predictions.npz): every number the report
needs, the elf-train command and the commit. Rows from other tools (retrofit, ensembling) write
RECORDs too; the report needs only these fields of them (fractions in [0, 1], test split,
thresholds chosen on validation):

    {"schema": "elf-bench-accuracy-run/1", "row": "elf-bs+ens", "seed": 0,
     "variant": {"of": "elf-bs", "adds": "ensembling"},  # optional: what it is built on
     "command": "...", "command_source": "...", "commit": "...",
     "dataset": "...",  # optional for a variant: its class order is its base row's
     "test": {"best": POINT, "chosen": POINT}}    # POINT: balanced_top1, tail, flops_saved

('best': validation's best point; 'chosen': the cheapest within the tolerance of it.) Rows with
"adds": "ensembling" are the ensembling column of the page's main table. Training rows also carry
test.exits, val and tail_protected (the other tables). Files of the earlier layout (one per row
and seed, <row>-s<seed>.json: a bare RECORD) are folded into the row files by `fold`.
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
ROW_SCHEMA = "elf-bench-accuracy-row/1"
GROUPS = ("head", "middle", "tail")
TAIL_TOLERANCES = (0.0, 0.005, 0.01)  # tail-protected calibration points reported per run


def result_path(results_dir: Path, row: str) -> Path:
    return results_dir / f"{row}.json"


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
    """Add or replace one seed's record in its row file (an unchanged record is not rewritten,
    so collecting again is no diff)."""
    path = result_path(results_dir, result["row"])
    data = json.loads(path.read_text()) if path.is_file() else {}
    data = {"schema": ROW_SCHEMA, "row": result["row"], "seeds": data.get("seeds", {})}
    old = data["seeds"].get(str(result["seed"]))
    if old is not None and {**old, "collected": None} == {**result, "collected": None}:
        return path
    seeds = {**data["seeds"], str(result["seed"]): result}
    data["seeds"] = dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def fold(paths: Sequence[Path], results_dir: Path) -> list[Path]:
    """Per-seed files of the earlier layout into their row files; those inside results_dir are
    removed once folded."""
    written = []
    for path in paths:
        record = json.loads(path.read_text())
        if record.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a per-seed result of schema {SCHEMA}")
        written.append(write_result(results_dir, record))
        if path.parent.resolve() == results_dir.resolve():
            path.unlink()
        log.info("%s folded into %s", path, written[-1])
    return written


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every seed's record of every row file, ordered by row then seed; a file of another schema
    is an error. Per-seed files of the earlier layout found there are folded in first."""
    old = [
        p
        for p in results_dir.glob("*-s*.json")
        if json.loads(p.read_text()).get("schema") == SCHEMA
    ]
    fold(sorted(old), results_dir)
    out = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("schema") != ROW_SCHEMA:
            raise ValueError(f"{path}: not a row file of schema {ROW_SCHEMA}")
        out += data["seeds"].values()
    return sorted(out, key=lambda r: f"{r['row']}-s{r['seed']}")
