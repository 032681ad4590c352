"""Run a real CLI process and check that it failed with exactly one `<prog>: error: ...` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", module, *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=180, env=env, cwd=cwd, check=False
    )


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], prog: str, *fragments: str, code: int | None = None
) -> str:
    """The process exited non-zero with exactly one stderr line `<prog>: error: ...` holding
    every fragment; returns that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    if code is not None:
        assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-4000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
