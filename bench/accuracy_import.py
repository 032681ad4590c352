"""Result files for runs whose directories are gone: the seed-0 balanced-softmax rows of the first
benchmark (their summary, bench/results/accuracy.json before per-run files, holds each run's
numbers exactly: one seed per row) and, for the bundled model (elf-bs seed 0), tail-protected
calibration measured on its exported ONNX stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.accuracy_runs import GROUPS, SCHEMA, tail_protected


def _n1(stat: dict[str, Any]) -> Any:
    if stat["n"] != 1:
        raise ValueError("a summary row of more than one seed cannot be split into runs")
    return stat["mean"]


def _point(p: dict[str, Any], with_flops: bool) -> dict[str, Any]:
    out = {"balanced_top1": _n1(p["balanced_top1"]), **{g: _n1(p[g]) for g in GROUPS}}
    if with_flops:
        out |= {"flops_saved": _n1(p["flops_saved"]), "thresholds": p["thresholds"][0],
                "exit_rates": p["exit_rates"][0]}  # fmt: skip
    return out


def from_summary(summary: dict[str, Any], row: str, *, command: str, note: str) -> dict[str, Any]:
    """The result file of one single-seed row of an old summary (schema of bench.accuracy_report
    before per-run files)."""
    meta, s = summary["meta"], summary["rows"][row]
    (seed,) = s["seeds"]
    return {
        "schema": SCHEMA, "row": row, "seed": seed, "epochs": meta["epochs"],
        "row_args": meta["row_args"][row], "dataset": meta["dataset"], "arch": meta["arch"],
        "method": s["method"], "loss": s["loss"],
        "train_class_counts": meta["train_class_counts"], "groups": meta["groups"],
        "command": command, "command_source": "reconstructed from the row",
        "commit": None, "finished": None, "collected": meta["date"], "note": note,
        "test": {
            "exits": [_point(e, False) for e in s["exits"]],
            "best": _point(s["early_exit_best"], True),
            "chosen": _point(s["early_exit_chosen"], True),
        },
        "val": {"exits": None, "tolerance": 0.005,
                "best": {"balanced_top1": _n1(s["val_best_balanced_top1"])}, "chosen": None},
        "tail_protected": [],
    }  # fmt: skip


def model_tail_protected(model_dir: Path, tolerance: float = 0.005) -> list[dict[str, Any]]:
    """tail_protected() of an exported model directory: its ONNX stages run over the validation
    and test splits its config.json rebuilds."""
    # Imported here: onnxruntime and the data pipeline are only needed for this step.
    from elf_core.accuracy import class_groups  # noqa: PLC0415
    from elf_core.manifest import load_manifest  # noqa: PLC0415
    from model_export.calibrate_run import split_probs  # noqa: PLC0415
    from model_export.runtime import StageChain  # noqa: PLC0415
    from training.checkpoint import load_train_config  # noqa: PLC0415
    from training.data import build_splits  # noqa: PLC0415

    manifest = load_manifest(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    splits = build_splits(load_train_config(config).data)
    runner = StageChain([model_dir / s.file for s in manifest.stages], ("CPUExecutionProvider",))
    kw = {"batch_size": 500, "progress": False}
    val = split_probs(runner, splits.val, splits, desc="validation", **kw)  # type: ignore[arg-type]
    test = split_probs(runner, splits.test, splits, desc="test", **kw)  # type: ignore[arg-type]
    flops = {"cumulative": [e.cumulative_flops for e in manifest.exits],
             "full": manifest.flops_full}  # fmt: skip
    groups = class_groups(splits.train_class_counts)
    return tail_protected(val, test, flops, groups, tolerance)
