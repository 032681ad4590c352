"""Fixtures of the deploy tests: the tiny fixture model, and one real elf-serve process on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import procs
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
