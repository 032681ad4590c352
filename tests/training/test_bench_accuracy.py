"""bench/accuracy on the generated folder: rows run, finished rows are skipped, result files and
the report written."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from bench import accuracy
from bench.accuracy_report import summarize
from bench.accuracy_runs import load_results
from tests.training.conftest import tiny_args


@pytest.mark.integration
def test_rows_run_skip_and_report(image_folder: Path, tmp_path: Path) -> None:
    # Later arguments win: the tiny data and network replace the benchmark's defaults.
    small = [a for a in tiny_args(image_folder, tmp_path / "unused") if a != "--no-progress"]
    small = small[: small.index("--out")] + small[small.index("--out") + 2 :]
    results, stem = tmp_path / "results", tmp_path / "acc"
    argv = ["--rows", "standard-ce", "elf-bs", "--epochs", "1", "--runs-dir", str(tmp_path),
            "--results-dir", str(results), "--pages", str(stem),
            "--train-args", shlex.join(small)]  # fmt: skip
    assert accuracy.main(argv) == 0
    metrics = [tmp_path / f"{row}-e1-s0" / "metrics.json" for row in ("standard-ce", "elf-bs")]
    stamps = [p.stat().st_mtime_ns for p in metrics]
    assert accuracy.main(argv) == 0  # finished rows are skipped, not retrained
    assert [p.stat().st_mtime_ns for p in metrics] == stamps
    # One result file per row, each seed with the command line elf-train recorded itself.
    elf = json.loads((results / "elf-bs.json").read_text())["seeds"]["0"]
    assert elf["command_source"] == "recorded by elf-train"
    assert elf["command"].startswith("python -m training.cli --dataset fashion-mnist-lt")
    assert "--method elf --loss balanced_softmax" in elf["command"]
    assert len(elf["commit"].removesuffix("+dirty")) == 40
    assert [t["tail_tolerance"] for t in elf["tail_protected"]] == [None, 0.0, 0.005, 0.01]
    report = {"rows": summarize(load_results(results), list(accuracy.PLAN))}
    assert list(report["rows"]) == ["elf-bs", "standard-ce"]  # in the order of bench's PLAN
    row = report["rows"]["elf-bs"]
    assert row["method"] == "elf" and row["loss"] == "balanced_softmax"
    test = json.loads(metrics[1].read_text())["test"]
    assert row["best"]["balanced_top1"]["mean"] == test["calibrated_best"]["balanced_top1"]
    assert row["exits"][2]["tail"]["mean"] == test["exits"][2]["groups"]["tail"]
    md = (stem / "accuracy.md").read_text()
    assert "| elf-bs | 0 |" in md and "(recorded by elf-train; commit " in md


def test_unknown_row_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown rows"):
        accuracy.main(["--rows", "nope"])
