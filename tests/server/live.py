"""A real `elf-serve` process on a free loopback port, for the integration tests."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    grpc_target: str | None = None  # host:port of its gRPC listener; None when off

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def terminate(self, timeout_s: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def elf_serve() -> str:
    script = Path(sys.executable).parent / "elf-serve"
    return str(script) if script.exists() else "elf-serve"


def live_server(
    model_dir: Path, log: Path, *flags: str, **env: str
) -> AbstractContextManager[LiveServer]:
    return live_command([elf_serve(), *flags], model_dir, log, **env)


@contextmanager
def live_command(
    command: list[str], model_dir: Path, log: Path, /, **env: str
) -> Iterator[LiveServer]:
    """`command` (elf-serve or a wrapper of it) with --host and --port, from the repo root; gRPC
    on a free port of its own unless ELF_GRPC_PORT is given."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
    grpc_port = env.get("ELF_GRPC_PORT") or str(free_port())
    environ |= {"ELF_MODEL_DIR": str(model_dir), "ELF_PROVIDERS": "cpu", **env}
    environ["ELF_GRPC_PORT"] = grpc_port
    cmd = [*command, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    grpc_target = None if grpc_port in ("0", "off") else f"127.0.0.1:{grpc_port}"
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log, grpc_target)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"elf-serve exited with {proc.returncode}:\n{server.logs()}")
            try:
                if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"elf-serve not ready after 60 s:\n{server.logs()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            server.terminate()


class ServerEvents:
    """The test's side of tests/server/gated_serve.py: the gate and the event log (FIFOs)."""

    def __init__(self, tmp: Path) -> None:
        self.gate_path, self.events_path = tmp / "gate.fifo", tmp / "events.fifo"
        os.mkfifo(self.gate_path)
        os.mkfifo(self.events_path)
        self._gate = os.open(self.gate_path, os.O_RDWR)
        self._events = os.fdopen(os.open(self.events_path, os.O_RDWR), "rb", buffering=0)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="server-events", daemon=True).start()

    def _read(self) -> None:
        for line in iter(self._events.readline, b""):
            self._lines.put(line.decode().strip())

    @property
    def env(self) -> dict[str, str]:
        return {"ELF_TEST_GATE": str(self.gate_path), "ELF_TEST_EVENTS": str(self.events_path)}

    def next(self, timeout_s: float = 20) -> str:
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no server event within {timeout_s} s") from None

    def expect(self, *lines: str) -> None:
        """The next events are exactly `lines`, in any order (the event loop and the batcher's
        worker write concurrently: a submit's `admitted` may follow the run it started)."""
        got = [self.next() for _ in lines]
        assert sorted(got) == sorted(lines), got

    def hold(self) -> None:
        os.write(self._gate, b"c")
        self.expect("gate c")

    def release(self) -> None:
        os.write(self._gate, b"o")
        self.expect("gate o")

    def close(self) -> None:
        """Let every held run go without waiting for the server to confirm: on the way out, so
        that a failed test does not leave the server holding requests."""
        os.write(self._gate, b"o")

    def unread(self) -> list[str]:
        out = []
        while not self._lines.empty():
            out.append(self._lines.get())
        return out


GATED_SERVE = [sys.executable, "-m", "tests.server.gated_serve"]
