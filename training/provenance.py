"""Provenance of what training and export write: the commit of the code that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of this code (training or export), "+dirty" when tracked files differ from it."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")
