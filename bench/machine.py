"""Machine facts recorded next to every benchmark number (a number without them means little)."""

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

PACKAGES = (
    "onnxruntime", "numpy", "pillow", "fastapi", "starlette", "uvicorn", "uvloop", "httptools",
    "pydantic", "litserve", "torch",
)  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit() -> str:
    head = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return head + ("+dirty" if dirty else "")


def facts() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gib": round(mem, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git_commit(),
        "wrk": _run(["wrk", "--version"]).split(" Copyright")[0],
        "packages": versions(),
    }


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, "-m", *_module_argv()])


def _module_argv() -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    return [name, *sys.argv[1:]]


def markdown(f: dict[str, Any]) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in f["packages"].items())
    busy = f["load_average_1_5_15"][0] > 0.25 * f["nproc"]
    warning = (
        ["- **WARNING: the machine was busy at the start (load average above); timings are "
         "not comparable with an idle machine's.**"]
        if busy
        else []
    )  # fmt: skip
    return "\n".join(
        [
            *warning,
            f"- Machine: {f['nproc']} CPUs ({f['cpu_model']}), {f['memory_gib']} GiB, "
            f"Linux {f['kernel']}, Python {f['python']}",
            f"- Load average at start (1/5/15 min): {f['load_average_1_5_15']} "
            "(an idle machine reads about 0)",
            f"- Code: git {f['git_commit']}; {f['wrk']}",
            f"- Packages: {pk}",
            f"- Date: {f['date']}",
        ]
    )
