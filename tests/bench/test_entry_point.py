"""`python -m bench`: the benchmark list, the fields every result records, the generated pages,
and the engine benchmark's repetition rule, two-run agreement and per-stage trace."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import machine
from bench.__main__ import BENCHMARKS
from bench.engine import agreement, median_ci, precision

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
PAGES = REPO / "docs" / "benchmarks"
FORBIDDEN = ("/work/", "/tmp/", "bench_lock", "load average", "busy machine", "quiet machine",
             "this machine", "issue ")  # fmt: skip


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_help_lists_every_benchmark_and_an_unknown_name_is_refused() -> None:
    out = bench("--help")
    assert out.returncode == 0
    for name in [*BENCHMARKS, "pages"]:
        assert f"\n  {name} " in out.stdout, name
    bad = bench("nope")
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr


def test_stamp_records_command_commit_and_hardware() -> None:
    s = machine.stamp("engine")
    assert s["benchmark"] == "engine" and s["command"].startswith("python -m ")
    assert len(s["commit"].removesuffix("+dirty")) >= 7
    hw = s["hardware"]
    assert hw["cores"] >= 1 and hw["memory_gib"] > 0 and hw["cpu_model"]
    for lib in ("onnxruntime", "numpy"):
        version = importlib.metadata.version(lib)
        assert hw["libraries"][lib] == version and f"{lib} {version}" in s["hardware_line"]
    assert f"{hw['cores']} cores" in s["hardware_line"] and hw["python"] in s["hardware_line"]


def test_committed_results_record_their_command_and_pages_are_generated_from_them(
    tmp_path: Path,
) -> None:
    for path in RESULTS.glob("*.json"):
        r = json.loads(path.read_text())
        assert r["command"].startswith("python -m bench ") and "commit" in r, path
        assert "hardware_line" in r, path
    # Few benchmarks (a result each), and the accuracy table's rows (a file each) kept in bounds.
    assert len(list(RESULTS.glob("*.json"))) <= 10
    assert len(list((RESULTS / "accuracy").glob("*.json"))) <= 30
    assert {p.name for p in RESULTS.iterdir() if not p.is_file()} == {"accuracy"}
    out = bench("pages", "--pages", str(tmp_path))
    assert out.returncode == 0, out.stderr
    made = sorted(p.name for p in tmp_path.glob("*.md"))
    assert made == ["accuracy.md", "engine.md", "http.md", "retrofit.md"]
    for name in made:  # the committed pages are exactly what the results generate
        assert (PAGES / name).read_text() == (tmp_path / name).read_text(), name
    for page in PAGES.glob("*.md"):
        text = page.read_text().lower()
        assert not [w for w in FORBIDDEN if w in text], page


def test_median_interval_and_precision() -> None:
    assert median_ci([5.0, 1.0, 3.0, 2.0, 4.0]) == (1.0, 5.0)  # below 6 values: min and max
    ten = [float(v) for v in range(1, 11)]
    assert median_ci(ten) == (2.0, 9.0)  # order statistics 2 and 9 (97.9% coverage)
    assert precision([100.0, 101.0, 99.0, 100.0, 100.5, 99.5]) == pytest.approx(0.01)


def test_agreement_is_the_largest_relative_spread_between_the_runs() -> None:
    def run(ms: float, vs_full: float, ratio: float) -> dict[str, object]:
        row = {"batch": 32, "variant": "batcher-age", "ms_per_image": ms,
               "time_vs_full": vs_full, "vs_stage_time_ideal": ratio}  # fmt: skip
        return {"models": [{"model": "heavy", "rows": [row]}]}

    a = agreement([run(40.0, 0.50, 1.10), run(41.0, 0.51, 1.12)], 0.05)
    assert a["agree"] and a["max_spread"] == pytest.approx(0.01 / 0.505, abs=1e-4)
    b = agreement([run(40.0, 0.50, 1.45), run(41.0, 0.50, 1.17)], 0.05)
    assert not b["agree"] and b["max_spread"] == pytest.approx(0.28 / 1.31, abs=1e-4)
    c = agreement([run(40.0, 0.50, 1.10), run(40.0, 0.56, 1.10)], 0.05)
    assert not c["agree"] and c["max_spread"] == pytest.approx(0.06 / 0.53, abs=1e-4)
    # The machine ran 10% slower in the second run, every variant with it: not a disagreement.
    d = agreement([run(40.0, 0.50, 1.10), run(44.0, 0.50, 1.10)], 0.05)
    assert d["agree"] and d["rows"][0]["spread_ms_per_image"] == pytest.approx(4 / 42, abs=1e-4)


@pytest.mark.integration
def test_engine_runs_twice_with_a_trace_whose_parts_add_up(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    done = bench("engine", "--quick", "--models", "bundled", "--batch-sizes", "8", "--trace",
                 "--trace-bursts", "1", "--twice", "--out", str(out), timeout=300)  # fmt: skip
    result = json.loads(out.read_text())
    assert done.returncode == (0 if result["agreement"]["agree"] else 1), done.stderr
    assert result["command"].startswith("python -m bench engine --quick")
    assert len(result["runs"]) == 2 and (tmp_path / "engine.md").is_file()
    variants = {r["variant"] for r in result["agreement"]["rows"]}
    assert variants == {"full", "stages", "early-exit", "batcher", "batcher-age", "batcher-fresh"}
    for run in result["runs"]:
        trace = run["models"][0]["trace"]
        assert set(trace["policies"]) == {"batcher", "batcher-age", "batcher-fresh"}
        for policy in trace["policies"].values():
            ms = policy["ms_per_image"]
            parts = sum(v for k, v in ms.items() if k != "burst")
            assert parts == pytest.approx(ms["burst"], abs=1e-3)
            stages = policy["stages"]
            assert sum(s["rows_mean"] * s["calls"] for s in stages[:1]) == 64  # every image
            assert all(1 <= s["rows_min"] <= s["rows_max"] <= 8 for s in stages)
            assert [s["stage"] for s in stages] == sorted({s["stage"] for s in stages})
