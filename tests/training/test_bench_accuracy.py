"""bench/accuracy on the generated folder: rows run, finished rows are skipped, tables written."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from bench import accuracy
from tests.training.conftest import tiny_args


@pytest.mark.integration
def test_rows_run_skip_and_report(image_folder: Path, tmp_path: Path) -> None:
    # Later arguments win: the tiny data and network replace the benchmark's defaults.
    small = [a for a in tiny_args(image_folder, tmp_path / "unused") if a != "--no-progress"]
    small = small[: small.index("--out")] + small[small.index("--out") + 2 :]
    argv = ["--rows", "standard-ce", "elf-bs", "--epochs", "1", "--runs-dir", str(tmp_path),
            "--results", str(tmp_path / "acc"), "--train-args", shlex.join(small)]  # fmt: skip
    assert accuracy.main(argv) == 0
    metrics = [tmp_path / f"{row}-e1-s0" / "metrics.json" for row in ("standard-ce", "elf-bs")]
    stamps = [p.stat().st_mtime_ns for p in metrics]
    assert accuracy.main(argv) == 0  # finished rows are skipped, not retrained
    assert [p.stat().st_mtime_ns for p in metrics] == stamps
    report = json.loads((tmp_path / "acc.json").read_text())
    assert list(report["rows"]) == ["standard-ce", "elf-bs"]
    assert report["meta"]["epochs"] == 1 and report["meta"]["seeds"] == [0]
    row = report["rows"]["elf-bs"]
    assert row["method"] == "elf" and row["loss"] == "balanced_softmax"
    test = json.loads(metrics[1].read_text())["test"]
    assert (
        row["early_exit_best"]["balanced_top1"]["mean"] == test["calibrated_best"]["balanced_top1"]
    )
    assert row["exits"][2]["tail"]["mean"] == test["exits"][2]["groups"]["tail"]
    md = (tmp_path / "acc.md").read_text()
    assert "| elf-bs | 1 |" in md and "python -m bench.accuracy --rows standard-ce elf-bs" in md


def test_unknown_row_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown rows"):
        accuracy.main(["--rows", "nope", "--report-only"])
