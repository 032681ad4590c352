"""Helpers of the container tests: start containers on host networking, wait for them, and ask
the example images of examples/images of a server (the oracle is the venv's own elf-serve)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.engine import Engine
from tests.deploy.queries import REPO

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.png"))
BUNDLED_MODEL = REPO / "models" / "fashion-mnist-lt"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def container(
    engine: Engine, image: str, *command: str, options: tuple[str, ...] = ()
) -> Iterator[str]:
    """docker run -d --network host IMAGE COMMAND; yields the name; removes it afterwards."""
    name = unique("elf-test")
    engine.docker("run", "-d", "--name", name, "--network", "host", *options, image, *command)
    try:
        yield name
    finally:
        engine.docker("rm", "-f", "-v", name, check=False)


def _exited(engine: Engine, name: str) -> str | None:
    state = engine.inspect(name)["State"]
    if state["Running"]:
        return None
    logs = engine.logs(name)[-4000:]
    return f"{name} exited with {state['ExitCode']}:\n{logs}"


def wait_healthy(engine: Engine, name: str, timeout: float = 180) -> dict[str, Any]:
    """Until Docker's HEALTHCHECK reports healthy; returns State.Health."""
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = engine.inspect(name)["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            return health
        failed = _exited(engine, name)
        assert failed is None, failed
        assert time.monotonic() < deadline, f"{name} not healthy after {timeout} s: {health}"
        time.sleep(0.5)


def wait_ready(engine: Engine, name: str, url: str, timeout: float) -> None:
    """Until url answers 200 (a container without a health check, or one behind a proxy)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        failed = _exited(engine, name)
        assert failed is None, failed
        assert time.monotonic() < deadline, f"{url} not ready after {timeout} s"
        time.sleep(0.5)


def classify(url: str, images: list[Path]) -> list[dict[str, Any]]:
    """POST the images in one /v1/classify request; the answers without their timings."""
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    answer = httpx.post(f"{url}/v1/classify", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    for result in results:
        del result["timings"]
    return results


def classify_examples(url: str, per_request: int = 1) -> dict[str, dict[str, Any]]:
    """Every example image, `per_request` at a time; {file name: answer}."""
    out = {}
    for start in range(0, len(EXAMPLES), per_request):
        batch = EXAMPLES[start : start + per_request]
        for path, result in zip(batch, classify(url, batch), strict=True):
            result.pop("index")
            out[path.name] = result
    return out


def metric_value(metrics_text: str, sample: str) -> float:
    """The value of one exposition line `sample value` (sample with its labels, exactly)."""
    for line in metrics_text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in the metrics")
