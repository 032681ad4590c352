"""A real elf-serve process, under uvicorn and under Granian: 200 concurrent requests equal the
offline ONNX Runtime answers, the metrics add up, a full queue answers 503, and SIGTERM lets
in-flight requests finish."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from elf_core.exits import early_exit
from elf_core.manifest import load_manifest
from tests.server.live import (
    GATED_SERVE,
    LiveServer,
    ServerEvents,
    live_command,
    live_server,
)
from tests.server.tiny_model import normalise

pytestmark = pytest.mark.integration

N_REQUESTS = 200
T = TypeVar("T")
CONCURRENCY = 32


def _request(i: int, png: bytes, x: np.ndarray) -> tuple[str, dict[str, Any]]:
    """Four ways to send image i: v1 multipart, v1 raw body, v2 FP32, v2 BYTES."""
    kind = i % 4
    if kind == 0:
        return "/v1/classify", {"files": {"file": (f"{i}.png", png, "image/png")}}
    if kind == 1:
        return "/v1/models/tiny/classify", {
            "content": png,
            "headers": {"Content-Type": "image/png"},
        }
    if kind == 2:
        inp = {
            "name": "input",
            "shape": [1, 1, 28, 28],
            "datatype": "FP32",
            "data": x.ravel().tolist(),
        }
    else:
        inp = {
            "name": "input",
            "shape": [1],
            "datatype": "BYTES",
            "data": [base64.b64encode(png).decode()],
        }
    return "/v2/models/tiny/infer", {"json": {"id": str(i), "inputs": [inp]}}


def _answer(body: dict[str, Any]) -> tuple[int, int, float]:
    if "results" in body:
        r = body["results"][0]
        return r["class_index"], r["exit"]["index"], r["confidence"]
    out = {o["name"]: o["data"][0] for o in body["outputs"]}
    return out["class_index"], out["exit_index"], out["confidence"]


async def _fire(url: str, pngs: list[bytes], xs: np.ndarray) -> list[httpx.Response]:
    limit = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            path, kwargs = _request(i, pngs[i % len(pngs)], xs[i % len(pngs)])
            async with limit:
                return await client.post(path, **kwargs)

        return list(await asyncio.gather(*(one(i) for i in range(N_REQUESTS))))


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


# Each HTTP server's last words after a clean drain.
SHUTDOWN_LOG = {
    "uvicorn": "Application shutdown complete",
    "granian": "Granian shutdown completed",
}
HTTP_SERVERS = pytest.mark.parametrize("http_server", list(SHUTDOWN_LOG))


def assert_clean_exit(returncode: int, server: LiveServer, http_server: str = "uvicorn") -> None:
    # A clean drain after SIGTERM exits 0 (uvicorn's re-raised SIGTERM is absorbed by elf-serve).
    assert returncode == 0, server.logs()
    logs = server.logs()
    assert "batchers stopped" in logs and SHUTDOWN_LOG[http_server] in logs


def _sum(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


@HTTP_SERVERS
def test_concurrent_requests_equal_offline_results_and_metrics_add_up(  # noqa: PLR0917
    tiny_model_dir: Path, pngs: list[bytes], pixels: np.ndarray,
    offline_probs: list[np.ndarray], tmp_path: Path, http_server: str,
) -> None:  # fmt: skip
    manifest = load_manifest(tiny_model_dir)
    pred, exits = early_exit(offline_probs, manifest.thresholds)
    xs = normalise(pixels)
    env = {"ELF_MAX_BATCH_SIZE": "8", "ELF_MAX_QUEUE_DELAY_MS": "2"}
    env["ELF_HTTP_SERVER"] = http_server
    with live_server(tiny_model_dir, tmp_path / "serve.log", **env) as server:
        responses = asyncio.run(_fire(server.url, pngs, xs))
        assert [r.status_code for r in responses] == [200] * N_REQUESTS, server.logs()
        for i, r in enumerate(responses):
            j = i % len(pngs)
            cls, ex, conf = _answer(r.json())
            assert (cls, ex) == (pred[j], exits[j]), f"request {i}"
            assert conf == pytest.approx(offline_probs[ex][j].max(), abs=1e-5)
        m = _samples(httpx.get(f"{server.url}/metrics").text)
        served = [exits[i % len(pngs)] for i in range(N_REQUESTS)]
        assert _sum(m, "elf_images_total", model="tiny") == N_REQUESTS
        exit_counts = [_sum(m, "elf_exits_total", model="tiny", exit=str(k)) for k in range(3)]
        assert exit_counts == np.bincount(served, minlength=3).tolist()
        cum = [e.cumulative_flops for e in manifest.exits]
        assert _sum(m, "elf_flops_executed_total", model="tiny") == sum(cum[e] for e in served)
        assert _sum(m, "elf_flops_full_total", model="tiny") == N_REQUESTS * manifest.flops_full
        assert _sum(m, "elf_requests_total", route="/v2/models/{name}/infer", status="200") == 100
        # Batching happened: fewer stage-0 runs than images, and every image ran stage 0.
        assert _sum(m, "elf_batch_size_sum", model="tiny", stage="0") == N_REQUESTS
        assert _sum(m, "elf_batch_size_count", model="tiny", stage="0") < N_REQUESTS
        assert _sum(m, "elf_batch_size_sum", model="tiny", stage="2") == exit_counts[2]
        assert_clean_exit(server.terminate(), server, http_server)


@HTTP_SERVERS
def test_full_queue_is_503_and_sigterm_finishes_in_flight_requests(
    tiny_model_dir: Path,
    pngs: list[bytes],
    offline_probs: list[np.ndarray],
    tmp_path: Path,
    http_server: str,
) -> None:
    """The order of events is forced with the gate of tests/server/gated_serve.py and read back
    from its event log: which requests were admitted is known exactly, not guessed from timing."""
    pred, exits = early_exit(offline_probs, load_manifest(tiny_model_dir).thresholds)
    events = ServerEvents(tmp_path)
    # Rows that arrive while the worker is busy wait 400 ms for a fuller batch; the queue holds 2.
    env = {
        "ELF_MAX_QUEUE_SIZE": "2",
        "ELF_MAX_IMAGES_PER_REQUEST": "2",
        "ELF_MAX_QUEUE_DELAY_MS": "400",
        "ELF_MAX_BATCH_SIZE": "8",
        "ELF_HTTP_SERVER": http_server,
    }
    log = tmp_path / "serve.log"
    with (
        live_command(GATED_SERVE, tiny_model_dir, log, **env, **events.env) as server,
        contextlib.closing(events),
    ):

        async def step(*lines: str) -> None:
            await asyncio.to_thread(events.expect, *lines)

        async def full_queue(client: httpx.AsyncClient) -> tuple[list, list]:
            await asyncio.to_thread(events.hold)
            a = asyncio.ensure_future(_post(client, pngs[0]))
            await step("admitted 1", "run 0 1")  # A went to the idle worker; its run is held
            b = asyncio.ensure_future(_post(client, pngs[1]))
            await step("admitted 1")  # B waits in the queue: 2 of 2 places taken
            refused = await asyncio.gather(*(_post(client, pngs[i]) for i in range(2, 10)))
            await step(*["refused 1"] * 8)
            await asyncio.to_thread(events.release)
            return list(await asyncio.gather(a, b)), refused

        answered, refused = asyncio.run(_with_client(server.url, full_queue))
        assert [r.status_code for r in answered] == [200, 200], server.logs()
        assert [_answer(r.json())[:2] for r in answered] == [(pred[i], exits[i]) for i in (0, 1)]
        assert [r.status_code for r in refused] == [503] * 8
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        assert all("queue full" in r.json()["error"] for r in refused)
        m = _samples(httpx.get(f"{server.url}/metrics").text)
        assert _sum(m, "elf_rejected_total", reason="queue_full") == 8
        # What is left in the log are the stage runs of A and B, nothing admitted or refused.
        assert all(line.startswith("run ") for line in events.unread())

        async def shutdown_during_requests(client: httpx.AsyncClient) -> tuple[list, Exception]:
            await asyncio.to_thread(events.hold)
            c = asyncio.ensure_future(_post(client, pngs[2]))
            await step("admitted 1", "run 0 1")
            d = asyncio.ensure_future(_post(client, pngs[3]))
            await step("admitted 1")
            server.proc.send_signal(signal.SIGTERM)
            if http_server == "uvicorn":
                await step(f"signal {int(signal.SIGTERM)}", "draining")
            else:  # Granian's shutdown runs in Rust, where no hook reaches: watch the port
                await asyncio.to_thread(wait_until_refused, server.url)
            # The listening socket is closed: a new request cannot get in.
            late = await _post_error(server.url, pngs[4])
            await asyncio.to_thread(events.release)
            return list(await asyncio.gather(c, d)), late

        answered, late = asyncio.run(_with_client(server.url, shutdown_during_requests))
        assert [r.status_code for r in answered] == [200, 200], server.logs()
        assert [_answer(r.json())[:2] for r in answered] == [(pred[i], exits[i]) for i in (2, 3)]
        assert isinstance(late, httpx.ConnectError), late
        assert_clean_exit(server.proc.wait(20), server, http_server)
        assert all(line.startswith("run ") for line in events.unread())


async def _post(client: httpx.AsyncClient, png: bytes) -> httpx.Response:
    return await client.post("/v1/classify", content=png, headers={"Content-Type": "image/png"})


async def _post_error(url: str, png: bytes) -> Exception:
    """The error of a request on a fresh connection (AssertionError if it was answered)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        try:
            r = await _post(client, png)
        except httpx.HTTPError as exc:
            return exc
    raise AssertionError(f"answered {r.status_code} while the server was shutting down")


def wait_until_refused(url: str, timeout_s: float = 20) -> None:
    """Poll until a fresh connection to `url` is refused (bounded; not a sleep to order events)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"{url} still accepts connections"
        time.sleep(0.02)


async def _with_client(url: str, fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await fn(client)
