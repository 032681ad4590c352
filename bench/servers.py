"""Start one server process alone, wait until it is ready, account its CPU, stop it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerSpec:
    name: str  # "elf", "fastapi", "litserve"
    argv: list[str]  # without --port; {port} is appended as "--port N"
    ready_path: str
    env: dict[str, str]


@dataclass
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def cpu_seconds(self) -> float:
        """user + system CPU of the server's processes: its process group and every descendant
        (LitServe forks into the group; Ray's workers start sessions of their own)."""
        return sum(ticks for _, ticks in _processes(self.proc.pid).values()) / CLOCK_TICKS

    def descendants(self) -> set[int]:
        return set(_processes(self.proc.pid))

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _processes(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime ticks) of `root`, its group and all their descendants."""
    table: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, pgrp, ticks)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        # fields[1] = ppid, fields[2] = pgrp, fields[11] = utime, fields[12] = stime
        pid = int(stat.parent.name)
        table[pid] = (int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12]))
    ours = {pid for pid, (_, pgrp, _) in table.items() if root in (pgrp, pid)}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _, _) in table.items() if ppid in ours and pid not in ours}
        ours |= new
        grew = bool(new)
    return {pid: (table[pid][0], table[pid][2]) for pid in ours}


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.spec.name} exited with {server.proc.returncode}; "
                f"log {server.log_path}:\n{server.log_path.read_text(errors='replace')[-3000:]}"
            )
        try:
            status, _ = server.get(server.spec.ready_path, timeout_s=2.0)
        except (OSError, urllib.error.URLError):
            status = 0
        if status == 200:
            return
        time.sleep(0.25)
    raise TimeoutError(f"{server.spec.name} not ready after {timeout_s:.0f} s ({server.log_path})")


def _stop(server: RunningServer, timeout_s: float = 30.0) -> None:
    """SIGTERM to the server's own process group; then whatever it started is ended too
    (children in the group, like LitServe's workers, and descendants that left it, like Ray's)."""
    pgid = server.proc.pid
    started = server.descendants() - {pgid}
    if server.proc.poll() is None:
        os.killpg(pgid, signal.SIGTERM)
        try:
            server.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; SIGKILL", server.spec.name, timeout_s)
            os.killpg(pgid, signal.SIGKILL)
            server.proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = started & _alive(started)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            if not left:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for pid in started & _alive(started):
        log.warning(
            "%s: process %d still there after the server stopped; SIGKILL", server.spec.name, pid
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@contextmanager
def running(spec: ServerSpec, log_dir: Path, ready_timeout_s: float) -> Iterator[RunningServer]:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
    env |= {"ELF_GRPC_PORT": "0"} | spec.env  # elf-serve's gRPC off unless a spec asks for it
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*spec.argv, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it ends its children
        )
    server = RunningServer(spec, proc, f"http://127.0.0.1:{port}", log_path)
    try:
        t0 = time.monotonic()
        _wait_ready(server, ready_timeout_s)
        log.info("%s ready on port %d in %.1f s", spec.name, port, time.monotonic() - t0)
        yield server
    finally:
        _stop(server)
