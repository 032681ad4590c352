"""A private Docker engine for the container tests, and a thin client of the docker CLI.

`private_engine()` starts Debian's dockerd as root with its own data root, exec root, socket and
pid file under a fresh temporary directory, no bridge and no iptables changes, so it touches
nothing of the machine's and runs beside any other engine. Storage: overlay2 (the kernel has it
here; vfs copies the whole file system for every build step and container, several times
slower), vfs where overlay2 does not start. On exit it removes every container, stops the daemon
by its pid, unmounts what it left mounted under its directory and deletes that directory (image
layers included). ELF_TEST_DOCKER_HOST=unix:///path/docker.sock uses an engine that is already
running instead (images are kept between runs: faster while iterating on the tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.procs import executable, log_tail


@dataclass(frozen=True)
class Engine:
    host: str  # DOCKER_HOST, unix:///.../docker.sock
    private: bool  # started (and removed) by these tests

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(
            [executable("docker"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc.stdout.strip()

    def logs(self, name: str) -> str:
        """A container's stdout and stderr, interleaved."""
        proc = subprocess.run(
            [executable("docker"), "logs", name],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout

    def inspect(self, *names: str, image: bool = False) -> dict[str, Any]:
        kind = ["image", "inspect"] if image else ["inspect"]
        found: list[dict[str, Any]] = json.loads(self.docker(*kind, *names))
        return found[0]

    def remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq").split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, timeout=180)


def _wait_for_socket(engine: Engine, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"dockerd exited with {proc.returncode}:\n{log_tail(log)}")
        probe = subprocess.run(
            [executable("docker"), "version", "--format", "{{.Server.Version}}"],
            env=engine.env(),
            capture_output=True,
            check=False,
            timeout=30,
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd not answering after 60 s:\n{log_tail(log)}")
        time.sleep(0.2)


def _start(root: Path, driver: str) -> tuple[Engine, subprocess.Popen[bytes]]:
    sock, log = root / "docker.sock", root / f"dockerd-{driver}.log"
    argv = [
        executable("dockerd"),
        "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "-H", f"unix://{sock}", "--pidfile", str(root / "dockerd.pid"),
        "--iptables=false", "--ip6tables=false", "--bridge=none", f"--storage-driver={driver}",
    ]  # fmt: skip
    engine = Engine(f"unix://{sock}", private=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_socket(engine, proc, log)
    except AssertionError:
        if proc.poll() is None:
            _stop(proc)
        raise
    return engine, proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _unmount_below(root: Path) -> None:
    """dockerd leaves its network namespace and data-root mounts behind: deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, timeout=30)


@contextlib.contextmanager
def private_engine() -> Iterator[Engine]:
    existing = os.environ.get("ELF_TEST_DOCKER_HOST")
    if existing:
        yield Engine(existing, private=False)
        return
    assert os.geteuid() == 0, "the container tests start dockerd and need root"
    # A short path: the socket's path must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="elf-engine-", dir="/tmp"))
    try:
        try:
            engine, proc = _start(root, "overlay2")
        except AssertionError:
            engine, proc = _start(root, "vfs")
        try:
            yield engine
        finally:
            try:
                if proc.poll() is None:
                    engine.remove_all_containers()
            finally:
                _stop(proc)
    finally:
        _unmount_below(root)
        shutil.rmtree(root)
