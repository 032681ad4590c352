"""Slow and idle clients are bounded (ELF_HEAD_TIMEOUT_S, ELF_KEEP_ALIVE_TIMEOUT_S,
ELF_MAX_CONNECTIONS), against real elf-serve processes under uvicorn and Granian: a slowloris
of 40 sockets is cut off while the service answers a classify request, connections that send
nothing are closed, an idle keep-alive connection closes, and past the connection limit a
request is refused."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.live import LiveServer, live_server
from tests.server.tiny_model import fixture_pixels, png_bytes

pytestmark = pytest.mark.integration

SLOW, SILENT = 40, 10
HEAD_TIMEOUT_S = 2


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    env = {
        "ELF_HTTP_SERVER": request.param,
        "ELF_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "ELF_KEEP_ALIVE_TIMEOUT_S": "1",
        "ELF_WARMUP_ALL_BATCH_SIZES": "false",
        "ELF_MAX_BATCH_SIZE": "4",
    }
    log = tmp_path_factory.mktemp("slow") / "serve.log"
    with live_server(tiny_model_dir, log, **env) as s:
        yield s


def _connect(server: LiveServer) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed (EOF, a reset, or a 408 then EOF); never blocks."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            if not chunk:
                break
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_slowloris_is_cut_off_while_the_service_answers(
    server: LiveServer, request: pytest.FixtureRequest
) -> None:
    slow = [_connect(server) for _ in range(SLOW)]
    silent = [_connect(server) for _ in range(SILENT)]
    for sock in slow:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n")
    start, open_ = time.monotonic(), set(range(SLOW))
    png = png_bytes(fixture_pixels(1)[0])
    answered = False
    # A header byte every 0.25 s from every slow socket, until the server has closed them all.
    while open_ and time.monotonic() - start < HEAD_TIMEOUT_S + 8:
        for i in list(open_):
            try:
                slow[i].sendall(b"X")
            except OSError:
                open_.discard(i)
        if not answered:  # the service answers a real request meanwhile
            r = httpx.post(f"{server.url}/v1/classify", files={"file": ("x.png", png)}, timeout=5)
            assert r.status_code == 200, r.text
            answered = True
        open_ = {i for i in open_ if not _closed_by_server(slow[i])}
        time.sleep(0.25)
    took = time.monotonic() - start
    assert answered and not open_, f"{len(open_)} slow connections still open after {took:.1f} s"
    assert HEAD_TIMEOUT_S * 0.8 < took < HEAD_TIMEOUT_S + 8
    # hyper (Granian) starts its head timer at a head's first byte: a connection that sends
    # nothing stays open there (docs/serving/limits.md); uvicorn's timer starts at connect.
    deadline = time.monotonic() + 5
    while request.node.callspec.params["server"] == "uvicorn" and not all(
        _closed_by_server(s) for s in silent
    ):
        assert time.monotonic() < deadline, "connections that sent nothing are still open"
        time.sleep(0.1)
    for sock in slow + silent:
        sock.close()


def test_an_idle_keep_alive_connection_closes(
    server: LiveServer, request: pytest.FixtureRequest
) -> None:
    sock = _connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    start = time.monotonic()
    assert sel.select(timeout=HEAD_TIMEOUT_S + 5), "idle connection not closed"
    assert sock.recv(1) == b""
    # uvicorn: ELF_KEEP_ALIVE_TIMEOUT_S (1 s); Granian: hyper's header read timeout.
    assert time.monotonic() - start < HEAD_TIMEOUT_S + 2
    sock.close()


def test_past_the_connection_limit_requests_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {"ELF_MAX_CONNECTIONS": "4", "ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    with live_server(tiny_model_dir, tmp_path / "serve.log", **env) as server:
        held = [_connect(server) for _ in range(4)]
        r = httpx.get(f"{server.url}/v2/health/live", timeout=5)
        assert r.status_code == 503
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "still refused after the connections closed"
            time.sleep(0.05)
