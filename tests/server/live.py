"""A real `elf-serve` process on a free loopback port, for the integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

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


@contextmanager
def live_server(model_dir: Path, log: Path, *flags: str, **env: str) -> Iterator[LiveServer]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
    environ |= {"ELF_MODEL_DIR": str(model_dir), "ELF_PROVIDERS": "cpu", **env}
    cmd = [elf_serve(), "--host", "127.0.0.1", "--port", str(port), *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log)
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
