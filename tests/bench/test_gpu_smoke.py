"""bench/gpu_smoke.py on the CPU: wheel parts joined, the host-copy guard, the dry-run report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bench import gpu_smoke
from bench.gpu_tools import HostCopyError, forbid_host_copies


def split(data: bytes, name: str, folder: Path, size: int) -> None:
    for i in range(0, len(data), size):
        (folder / f"{name}{gpu_smoke.PART}{i // size:03d}").write_bytes(data[i : i + size])


def test_wheel_parts_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    carried = tmp_path / "carried"
    carried.mkdir()
    data = bytes(range(256)) * 50  # 12,800 bytes in 12 parts: "010" must sort after "002"
    split(data, "big-1.0-py3-none-any.whl", carried, 1100)
    (carried / "small-1.0-py3-none-any.whl").write_bytes(b"small")
    digest = hashlib.sha256(data).hexdigest()
    (carried / "SHA256SUMS").write_text(f"{digest}  big-1.0-py3-none-any.whl\n")
    wheels = gpu_smoke.join_parts(carried, tmp_path / "out")
    assert sorted(w.name for w in wheels) == [
        "big-1.0-py3-none-any.whl",
        "small-1.0-py3-none-any.whl",
    ]
    assert (tmp_path / "out" / "big-1.0-py3-none-any.whl").read_bytes() == data
    (carried / f"big-1.0-py3-none-any.whl{gpu_smoke.PART}003").write_bytes(b"x" * 1100)
    with pytest.raises(RuntimeError, match=r"sha256 .* \(SHA256SUMS\)"):
        gpu_smoke.join_parts(carried, tmp_path / "out2")


def test_host_copy_guard_raises_for_the_guarded_device_only() -> None:
    value = ort.OrtValue.ortvalue_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    with forbid_host_copies("cpu"), pytest.raises(HostCopyError, match=r"cpu tensor \[2, 3\]"):
        value.numpy()
    with forbid_host_copies("cuda") as reads:
        np.testing.assert_array_equal(value.numpy()[1], [3, 4, 5])
    assert reads == [(2, 3)]
    assert value.numpy().shape == (2, 3)  # restored afterwards


def test_a_step_after_the_budget_is_skipped_and_a_failure_recorded() -> None:
    report = gpu_smoke.Report(budget_s=60)
    report.step("ok", lambda: 1)
    report.step("bad", lambda: 1 / 0)
    report.budget_s = -1
    report.step("late", lambda: 2)
    steps = report.data["steps"]
    assert steps["ok"]["status"] == "ok" and steps["ok"]["result"] == 1
    assert steps["bad"]["status"] == "failed" and "ZeroDivisionError" in steps["bad"]["error"]
    assert steps["late"]["status"] == "skipped" and report.failed == ["bad"]


def test_dry_run_writes_one_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu_smoke.json"
    assert gpu_smoke.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == ["environment", "gpu_tests", "warm_up", "runner_bundled"]
    assert all(s["status"] == "ok" for s in steps.values()) and report["failed"] == []
    assert steps["environment"]["result"]["cuda_unusable_reason"].startswith("this onnxruntime")
    assert "skipped" in steps["gpu_tests"]["result"]["summary"]
    warm = steps["warm_up"]["result"]
    for search in ("HEURISTIC", "EXHAUSTIVE"):
        assert warm[search]["providers"] == ["CPUExecutionProvider"]
        assert set(warm[search]["first_call_ms"]) == {"1", "2", "4"}
        assert all(v > 0 for v in warm[search]["first_call_ms"].values())
    assert warm["HEURISTIC"]["random_batches"]["rows_out"] > 0
    assert set(warm["HEURISTIC"]["gpu_memory_used_mib"]) == {
        "before", "after_load", "after_warm_up", "after_50_batches",
    }  # fmt: skip
    bench = steps["runner_bundled"]["result"]
    assert bench["batch_4"]["stages_ms_per_image"] > 0 and bench["batch_4"]["full_ms_per_image"] > 0
    assert report["wall_s"] < 480
