"""What every benchmark result records beside its numbers: the command, the commit and the
hardware (a number without them means little)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

# The libraries a timing depends on; torch only where it is installed.
LIBRARIES = ("onnxruntime", "numpy", "torch")
OTHER_PACKAGES = (
    "pillow", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "litserve",
)  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str:
    head = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return head + ("+dirty" if dirty else "")


def hardware() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "libraries": versions(LIBRARIES),
        "packages": versions(OTHER_PACKAGES),
        "wrk": _run(["wrk", "--version"]).split(" Copyright")[0],
    }


def hardware_line(hw: dict[str, Any]) -> str:
    """One line: CPU model, cores, memory, Python and the libraries that set the timings."""
    libs = ", ".join(f"{k} {v}" for k, v in hw["libraries"].items())
    return (
        f"{hw['cpu_model']}, {hw['cores']} cores, {hw['memory_gib']} GiB; "
        f"Python {hw['python']}, {libs}"
    )


def command_line() -> str:
    """The command as a user types it (`python -m bench NAME ...`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name.removesuffix(".__main__") if spec is not None else Path(sys.argv[0]).stem
    return shlex.join(["python", "-m", name, *sys.argv[1:]])


def stamp(benchmark: str) -> dict[str, Any]:
    """The fields every result JSON starts with. `load_1min_at_start` is kept as data: a
    result taken while other work ran is not comparable with one taken on an idle machine."""
    hw = hardware()
    return {
        "benchmark": benchmark,
        "command": command_line(),
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware_line": hardware_line(hw),
        "hardware": hw,
        "load_1min_at_start": round(os.getloadavg()[0], 2),
    }
