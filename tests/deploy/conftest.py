"""Fixtures of the deploy tests: one real elf-serve process on the tiny fixture model, shared."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import procs
from tests.server.tiny_model import build_tiny_model


@dataclass(frozen=True)
class LiveServer:
    url: str
    port: int
    model: str
    log: Path


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("deploy-server")
    model_dir = build_tiny_model(root / "tiny", name="tiny")
    port = procs.free_port()
    log = root / "elf-serve.log"
    with procs.serve(model_dir, port, log):
        yield LiveServer(f"http://127.0.0.1:{port}", port, "tiny", log)
