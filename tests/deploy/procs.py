"""Real processes for the deploy integration tests: elf-serve, Prometheus and nginx on loopback.

Each process writes its output to a log file; a process that exits early or never becomes ready
fails the test with the end of that log. Everything binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias

import httpx


def executable(name: str) -> str:
    """A console script of this venv (elf-serve) or a program on PATH (prometheus, nginx)."""
    local = Path(sys.executable).parent / name
    # nginx lives in /usr/sbin, which a non-login PATH may lack.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = str(local) if local.exists() else shutil.which(name, path=search)
    assert found is not None, f"{name} is not installed"
    return found


Running: TypeAlias = contextlib.AbstractContextManager[object]


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextlib.contextmanager
def running(
    argv: list[str], log: Path, ready: Callable[[], bool], timeout: float, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Start argv, wait until ready() is true, yield the process, then stop it (TERM, then KILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited with {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} not ready after {timeout} s:\n{log_tail(log)}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def serve(model_dir: Path, port: int, log: Path) -> Running:
    """elf-serve on 127.0.0.1:port, ready when /v2/health/ready answers 200."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
    env.update(
        ELF_MODEL_DIR=str(model_dir),
        ELF_PROVIDERS="cpu",
        ELF_WARMUP_ALL_BATCH_SIZES="false",
        ELF_MAX_BATCH_SIZE="8",
        ELF_AUDIT_RATE="1.0",  # every early answer audited: the dashboard's audit panels fill
        ELF_LATENCY_TARGET_MS="1000",  # the load controller on (idle at this load): its panels
        ELF_GRPC_PORT="0",  # HTTP only: no fixed gRPC port shared by concurrent servers
    )
    argv = [executable("elf-serve"), "--host", "127.0.0.1", "--port", str(port)]
    ready = http_ok(f"http://127.0.0.1:{port}/v2/health/ready")
    return running(argv, log, ready, timeout=60, env=env)


def prometheus(config: Path, data: Path, port: int, log: Path) -> Running:
    argv = [
        executable("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    ready = http_ok(f"http://127.0.0.1:{port}/-/ready")
    return running(argv, log, ready, timeout=60, env=dict(os.environ))


def nginx(config: Path, prefix: Path, port: int, log: Path) -> Running:
    argv = [
        executable("nginx"),
        "-p", str(prefix), "-c", str(config), "-e", "stderr",
        # Workers as root (ignored when not root) so they may buffer bodies in the test's tmp.
        "-g", f"daemon off; pid {prefix / 'nginx.pid'}; user root;",
    ]  # fmt: skip
    ready = http_ok(f"http://127.0.0.1:{port}/nginx/health")
    return running(argv, log, ready, timeout=30, env=dict(os.environ))
