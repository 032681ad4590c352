"""bench.accuracy collect / report on generated run directories whose numbers are known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import accuracy, retrofit_page
from bench.accuracy_difficulty import RESULT
from bench.accuracy_report import summarize
from bench.accuracy_runs import ROW_SCHEMA, SCHEMA, load_results, write_result
from bench.retrofit_compare import save_row
from tests.elf_core.test_tail_protection import COUNTS, _problem

GROUPS = {"head": [0, 1], "middle": [2, 3], "tail": [4, 5]}
FLOPS = {"per_stage": [[40, 0], [60, 0]], "cumulative": [40, 100], "full": 100}


def _summary(bal: float, tail: float, saved: float | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"balanced_top1": bal, "groups": {"head": 0.9, "middle": 0.8, "tail": tail}}
    if saved is not None:
        s |= {"flops_saved": saved, "thresholds": [0.7, 0.0], "exit_rates": [0.5, 0.5]}
    return s


def _val(bal: float, tail: float, ratio: float) -> dict[str, Any]:
    return {"balanced_top1": bal, "tail": tail, "flops_ratio": ratio, "thresholds": [0.7, 0.0]}


def make_run(runs: Path, row: str, seed: int, bal: float, *, predictions: bool = False) -> Path:
    """A finished run directory as elf-train writes it (before it recorded its command)."""
    d = runs / f"{row}-e30-s{seed}"
    d.mkdir(parents=True)
    m = {
        "dataset": "fashion-mnist-lt-r100", "arch": "resnet32",
        "method": "elf" if row.startswith("elf") else "standard", "loss": "balanced_softmax",
        "epochs": 30, "seed": seed, "groups": GROUPS,
        "train_class_counts": COUNTS, "flops": FLOPS,
        "test": {"exits": [_summary(bal - 0.1, 0.5), _summary(bal, 0.9)],
                 "calibrated_best": _summary(bal, 0.9, 0.3),
                 "calibrated_chosen": _summary(bal - 0.004, 0.88, 0.5)},
        "val": {"exits": [_summary(bal - 0.1, 0.5), _summary(bal, 0.9)],
                "calibration": {"tolerance": 0.1, "best": _val(bal, 0.9, 0.7),
                                "chosen": _val(bal - 0.004, 0.88, 0.5)}},
    }  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(m))
    if predictions:
        (p0, p1), labels = _problem()
        np.savez(d / "predictions.npz", val_probs_0=p0, val_probs_1=p1, val_labels=labels,
                 test_probs_0=p0, test_probs_1=p1, test_labels=labels)  # fmt: skip
    return d


@pytest.fixture
def collected(tmp_path: Path) -> tuple[Path, Path]:
    runs = tmp_path / "runs"
    make_run(runs, "elf-bs", 0, 0.80, predictions=True)
    make_run(runs, "elf-bs", 1, 0.90, predictions=True)
    make_run(runs, "standard-bs", 2, 0.85)
    (runs / "elf-bs-e30-s2").mkdir()  # unfinished: no metrics.json
    (runs / "nonsense-e30-s0").mkdir()  # not a known row
    results, stem = tmp_path / "results", tmp_path / "report"
    argv = ["collect", "--runs-dir", str(runs), "--results-dir", str(results),
            "--pages", str(stem), "--train-commit", "abc1234"]  # fmt: skip
    assert accuracy.main(argv) == 0
    return results, stem


def _record(results: Path, row: str, seed: int) -> dict[str, Any]:
    data = json.loads((results / f"{row}.json").read_text())
    assert (data["schema"], data["row"]) == (ROW_SCHEMA, row)
    record: dict[str, Any] = data["seeds"][str(seed)]
    return record


def test_collect_writes_one_file_per_row_with_its_finished_seeds(
    collected: tuple[Path, Path],
) -> None:
    results, _ = collected
    assert sorted(p.name for p in results.iterdir()) == ["elf-bs.json", "standard-bs.json"]
    assert list(json.loads((results / "elf-bs.json").read_text())["seeds"]) == ["0", "1"]
    r = _record(results, "elf-bs", 1)
    assert (r["schema"], r["row"], r["seed"], r["commit"]) == (SCHEMA, "elf-bs", 1, "abc1234")
    assert r["command_source"] == "reconstructed from the row"
    assert r["command"].startswith("elf-train --dataset fashion-mnist-lt --imbalance-ratio 100")
    assert "--seed 1 " in r["command"] and "--method elf --loss balanced_softmax" in r["command"]
    assert r["command"].endswith("--threads 1 --eval-every 5 --no-progress")
    assert r["test"]["chosen"] == {
        "balanced_top1": 0.896, "head": 0.9, "middle": 0.8, "tail": 0.88, "flops_saved": 0.5,
        "thresholds": [0.7, 0.0], "exit_rates": [0.5, 0.5],
    }  # fmt: skip
    assert r["val"]["chosen"]["flops_saved"] == pytest.approx(0.5)
    # Tail protection from the saved predictions (the constructed problem of the unit tests).
    plain, zero = r["tail_protected"][:2]
    assert plain["tail_tolerance"] is None and zero["tail_tolerance"] == 0.0
    assert plain["test"]["tail"] == pytest.approx(0.75)
    assert plain["test"]["flops_saved"] == pytest.approx(0.6)
    assert zero["test"]["tail"] == pytest.approx(1.0)
    assert zero["test"]["flops_saved"] == pytest.approx(1 - (4 / 6 * 0.4 + 2 / 6))
    assert _record(results, "standard-bs", 2)["tail_protected"] == []


def test_report_is_built_from_the_result_files(collected: tuple[Path, Path]) -> None:
    results, stem = collected
    report = {"rows": summarize(load_results(results), list(accuracy.PLAN))}
    elf = report["rows"]["elf-bs"]
    assert elf["seeds"] == [0, 1]
    bal = elf["chosen"]["balanced_top1"]
    assert bal["mean"] == pytest.approx(0.846) and bal["n"] == 2
    assert bal["std"] == pytest.approx(np.std([0.796, 0.896], ddof=1))
    assert elf["exits"][0]["balanced_top1"]["mean"] == pytest.approx(0.75)
    assert report["rows"]["standard-bs"]["best"]["flops_saved"]["std"] == 0.0
    gain = elf["tail_protected"][1]["tail_gain"]
    assert gain["mean"] == pytest.approx(0.25) and gain["n"] == 2
    md = (stem / "accuracy.md").read_text()
    assert "| elf-bs | 0,1 | 85.0 ± 7.1 | 85.0 ± 7.1 | 90.0 ± 0.0 | 30.0 ± 0.0 | 84.6 ± 7.1 |" in md
    assert "| standard-bs | 2 | 85.0 | 85.0 | 90.0 | 30.0 |" in md
    assert (
        "| elf-bs | 0,1 | 0 pt | 100.0 ± 0.0 | 100.0 ± 0.0 | 40.0 ± 0.0 | 25.0 ± 0.0 | 20.0 ± 0.0 |"
        in md
    )
    # What is missing, with the command that makes it; finished pairs are not listed.
    missing = "- `elf-bs` seeds [2]: `python -m bench accuracy --epochs 30 --seeds 2 --rows elf-bs"
    assert missing in md and "- `standard-bs` seeds [0, 1]:" in md
    # Collecting again rewrites nothing that did not change.
    stamp = (results / "elf-bs.json").stat().st_mtime_ns
    assert accuracy.main(["collect", "--runs-dir", str(results.parent / "runs"),
                          "--results-dir", str(results), "--pages", str(stem),
                          "--train-commit", "abc1234"]) == 0  # fmt: skip
    assert (results / "elf-bs.json").stat().st_mtime_ns == stamp
    # The page needs only the files: rebuilding it from them gives the same page.
    (stem / "accuracy.md").unlink()
    argv = ["report", "--results-dir", str(results), "--pages", str(stem)]
    assert accuracy.main(argv) == 0
    assert (stem / "accuracy.md").read_text() == md


def test_a_foreign_file_in_the_results_dir_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "elf-bs.json").write_text('{"row": "elf-bs"}')
    with pytest.raises(ValueError, match="not a row file"):
        load_results(tmp_path)


def test_per_seed_files_of_the_earlier_layout_are_folded(
    collected: tuple[Path, Path], tmp_path: Path
) -> None:
    results, stem = collected
    old = {**_record(results, "elf-bs", 1), "seed": 2, "command": "elf-train --seed 2"}
    (tmp_path / "elf-bs-s2.json").write_text(json.dumps(old))  # from another checkout
    argv = ["fold", str(tmp_path / "elf-bs-s2.json"), "--results-dir", str(results),
            "--pages", str(stem)]  # fmt: skip
    assert accuracy.main(argv) == 0
    assert _record(results, "elf-bs", 2) == old and (tmp_path / "elf-bs-s2.json").is_file()
    assert "- `elf-bs` seed 2: `elf-train --seed 2`" in (stem / "accuracy.md").read_text()
    # One copied into the results directory is folded when the results are loaded, and removed.
    (results / "standard-bs-s0.json").write_text(
        json.dumps({**old, "row": "standard-bs", "seed": 0})
    )
    assert [r["seed"] for r in load_results(results) if r["row"] == "standard-bs"] == [0, 2]
    assert sorted(p.name for p in results.iterdir()) == ["elf-bs.json", "standard-bs.json"]


def test_hard_order_is_the_measured_difficulty_and_trains_on_it() -> None:
    measured = json.loads(RESULT.read_text())
    order = measured["easiest_to_hardest"]
    assert " ".join(map(str, order)) == accuracy.HARD_ORDER
    recall = measured["val_recall"]
    assert [recall[c] for c in order] == sorted(recall, reverse=True)
    for row, args in accuracy.HARD_ROWS.items():
        assert row.endswith("-hard") and args.endswith(f"--class-order {accuracy.HARD_ORDER}")


def test_rows_of_other_tools_are_in_the_main_table_with_the_goal(
    collected: tuple[Path, Path],
) -> None:
    results, stem = collected
    point = {"balanced_top1": 0.849, "tail": 0.899, "flops_saved": 0.55}
    ens = {"schema": SCHEMA, "row": "elf-bs+ens", "seed": 0, "command": "ens", "commit": None,
           "command_source": "recorded", "variant": {"of": "elf-bs", "adds": "ensembling"},
           "test": {"best": {**point, "flops_saved": 0.4}, "chosen": point}}  # fmt: skip
    write_result(results, ens)
    retrofit = {"command": "python -m bench retrofit fmnist", "commit": "abc", "table": "| t |",
                "rows": [{"seed": 3, "test_best": point, "test_chosen": point}]}  # fmt: skip
    save_row(results, retrofit, "retrofit-bs", "standard-bs")
    save_row(results, retrofit, "retrofit-bs-tight", "standard-bs", tolerance=0.002)
    assert accuracy.main(["report", "--results-dir", str(results), "--pages", str(stem)]) == 0
    md = (stem / "accuracy.md").read_text()
    main = md[: md.index("## All training rows")].splitlines()
    rows = [line.split(" | ")[0].strip("| ") for line in main if line.startswith("| ")]
    assert rows == [
        "row", "standard-bs", "retrofit-bs", "retrofit-bs-tight", "elf-bs", "elf-bs+ens"
    ]  # fmt: skip
    # The standard row: 85.0 balanced, 90.0 tail; elf-bs saves 50% at 2 points below.
    assert "| elf-bs | no | n=2: 0,1 | 85.0 ± 7.1 |" in md and "| missed by 1.8 pt |" in md
    line = "| elf-bs+ens | yes | n=1: 0 | 84.9 | 89.9 | 40.0 | 0.5 pt | 84.9 | 89.9 | 55.0 | met |"
    assert line in md
    # A row calibrated at another tolerance says so.
    assert "| retrofit-bs-tight | no | n=1: 3 | 84.9 | 89.9 | 55.0 | 0.2 pt | 84.9 |" in md
    assert "| retrofit-bs | no | n=1: 3 |" in md and "- `retrofit-bs` seed 3: `python -m" in md
    assert "| retrofit-bs | 3 |" not in md  # not a training row: not in the other tables
    page = retrofit_page.write_page([results / "retrofit-bs.json"], stem).read_text()
    assert "## `retrofit-bs` seed 3\n" in page and "\n| t |\n" in page
