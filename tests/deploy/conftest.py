"""Fixtures of the deploy tests: the tiny fixture model, one real elf-serve process on it, and
for the container tests a private Docker engine with the images built by docker/build-local.sh."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import procs
from tests.deploy.containers import BUNDLED_MODEL, classify_examples
from tests.deploy.engine import Engine, private_engine
from tests.deploy.queries import REPO
from tests.server import live
from tests.server.live import free_port
from tests.server.tiny_model import build_tiny_model


@dataclass(frozen=True)
class LiveServer:
    url: str
    port: int
    model: str
    log: Path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("deploy-model") / "tiny", name="tiny")


@pytest.fixture(scope="session")
def live_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Shared by tests that do not count requests; a test that does starts its own server."""
    log = tmp_path_factory.mktemp("deploy-server") / "elf-serve.log"
    port = free_port()
    with procs.serve(tiny_model_dir, port, log):
        yield LiveServer(f"http://127.0.0.1:{port}", port, "tiny", log)


# Container tests (marker `container`): one private engine and one set of images per session.

FACTS: dict[str, str] = {}  # measured numbers, printed at the end of the run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FACTS:
        terminalreporter.section("container facts")
        for key, value in FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    with private_engine() as running:
        yield running


@pytest.fixture(scope="session")
def images(engine: Engine) -> Engine:
    """docker/build-local.sh all: the base image, elf-serving:cpu, elf-train:cpu, elf-nginx:local
    and elf-prometheus:local, on the private engine (empty, so everything is built from this
    checkout). On a reused engine (ELF_TEST_DOCKER_HOST) images that exist are kept: rebuild
    them with `docker/build-local.sh --force` after changing the code, and name the images a run
    needs in ELF_TEST_BUILD (build-local.sh's targets, default all)."""
    start = time.monotonic()
    targets = os.environ.get("ELF_TEST_BUILD", "all").split()
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "build-local.sh"), *targets],
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    FACTS[f"docker/build-local.sh {' '.join(targets)}"] = f"{time.monotonic() - start:.0f} s"
    return engine


@pytest.fixture(scope="session")
def venv_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The oracle of the container tests: elf-serve of this checkout's venv on the bundled model
    with default settings; {example file name: answer without timings}."""
    log = tmp_path_factory.mktemp("venv-server") / "elf-serve.log"
    with live.live_server(BUNDLED_MODEL, log) as server:
        return classify_examples(server.url)
