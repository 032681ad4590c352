"""tests/server/test_gpu.py skips without a GPU but fails under ELF_REQUIRE_GPU=1 (GPU machines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine.placement import probe_cuda

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = "tests/server/test_gpu.py"


def run_gpu_tests(require: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ELF_REQUIRE_GPU"}
    if require is not None:
        env["ELF_REQUIRE_GPU"] = require
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            GPU_TESTS,
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(probe_cuda() is None, reason="a GPU is usable here: test_gpu.py runs for real")
def test_gpu_tests_skip_without_a_gpu_and_fail_when_one_is_required() -> None:
    skipped = run_gpu_tests(None)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert " skipped" in skipped.stdout and "passed" not in skipped.stdout
    required = run_gpu_tests("1")
    assert required.returncode == 1, required.stdout + required.stderr
    assert "ELF_REQUIRE_GPU=1 but no usable GPU: this onnxruntime has no" in required.stdout
    assert " error" in required.stdout and "passed" not in required.stdout
