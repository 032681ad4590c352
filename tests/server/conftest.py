"""Fixtures: a tiny model directory (built without torch), settings and a TestClient app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.live import LiveServer, live_server
from tests.server.tiny_model import (
    build_tiny_model,
    fixture_pixels,
    normalise,
    png_bytes,
    stage_probs,
)

ADMIN_TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    """The fixture images the thresholds were set on: uint8 [64, 28, 28]."""
    return fixture_pixels(64)


@pytest.fixture(scope="session")
def pngs(pixels: np.ndarray) -> list[bytes]:
    return [png_bytes(p) for p in pixels]


def make_settings(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_dir": model_dir,
        "providers": "cpu",
        "max_batch_size": 8,
        "max_queue_delay_ms": 1.0,
        "intra_op_threads": 1,
        "admin_token": ADMIN_TOKEN,
        "request_timeout_s": 10.0,
        "grpc_port": 0,  # in-process apps: no gRPC listener (tests/server/test_grpc.py runs one)
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tiny_model_dir))) as c:
        yield c


@pytest.fixture(scope="session")
def offline_probs(tiny_model_dir: Path, pixels: np.ndarray) -> list[np.ndarray]:
    """Softmax per exit of the fixture images, from plain sess.run over the stage graphs."""
    return stage_probs(tiny_model_dir, normalise(pixels))


def files(pngs: list[bytes], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"img{i}.png", data, "image/png")) for i, data in enumerate(pngs)]


@pytest.fixture(scope="session")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real elf-serve process for the tests that only read from it (clients, docs, fuzz)."""
    log = tmp_path_factory.mktemp("served") / "serve.log"
    env = {"ELF_MAX_BATCH_SIZE": "8", "ELF_INTRA_OP_THREADS": "1"}
    with live_server(tiny_model_dir, log, ELF_WARMUP_ALL_BATCH_SIZES="false", **env) as server:
        yield server


@pytest.fixture(scope="session")
def admin_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real elf-serve with the admin endpoint on (ELF_ADMIN_TOKEN); tests may change its
    thresholds."""
    log = tmp_path_factory.mktemp("admin") / "serve.log"
    env = {"ELF_ADMIN_TOKEN": ADMIN_TOKEN, "ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    with live_server(tiny_model_dir, log, ELF_MAX_BATCH_SIZE="8", **env) as server:
        yield server
