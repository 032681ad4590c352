"""Run wrk with bench/wrk/post_images.lua and read back its JSON summary and its own CPU use."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.images import ImageSet, content_type

LUA = Path(__file__).parent / "wrk" / "post_images.lua"


@dataclass(frozen=True)
class WrkResult:
    concurrency: int
    requests: int
    duration_s: float
    latency_ms: dict[str, float]  # mean, p50, p90, p99, p999, max
    errors: dict[str, int]  # connect, read, write, status, timeout
    checked: int  # 200 answers whose class_index was read
    correct: int  # ... and equal to the image's label
    non200: int
    wrk_cpu_s: float  # user + system CPU of the load generator itself

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.checked if self.checked else None

    @property
    def wrk_cores(self) -> float:
        return self.wrk_cpu_s / self.duration_s


def write_list(images: ImageSet, path: Path) -> Path:
    """The Lua script's input: absolute path, label, content type per line."""
    lines = [
        f"{p.resolve()}\t{y}\t{content_type(f)}\n"
        for p, f, y in zip(images.paths(), images.files, images.labels, strict=True)
    ]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def run_wrk(
    url: str, image_list: Path, body: str, concurrency: int, duration_s: float
) -> WrkResult:
    """Closed loop: `concurrency` connections, one per wrk thread (see the Lua script)."""
    cmd = [
        "wrk",
        f"-t{concurrency}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "60s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        str(image_list),
        body,
        str(concurrency),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or "WRKJSON " not in out:
        raise RuntimeError(
            f"wrk failed ({proc.returncode}) after {time.perf_counter() - t0:.1f} s:\n{out}"
        )
    data: dict[str, Any] = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
    lat = {k: v / 1000.0 for k, v in data["latency_us"].items() if k != "stdev"}
    return WrkResult(
        concurrency=concurrency,
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        latency_ms=lat,
        errors={k: int(v) for k, v in data["errors"].items()},
        checked=int(data["checked"]),
        correct=int(data["correct"]),
        non200=int(data["non200"]),
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
    )
