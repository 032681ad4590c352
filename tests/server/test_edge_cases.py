"""Edge cases probed from outside, against a real elf-serve process (uvicorn and Granian):
non-finite and huge numbers, clients that hang up or stall, oversized request heads, shutdown
mid-body."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.live import LiveServer, live_server

pytestmark = pytest.mark.integration

HUGE = "1" + "0" * 309  # an integer literal beyond float's range


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("edge") / "serve.log"
    env = {"ELF_BODY_TIMEOUT_S": "1", "ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    env["ELF_HTTP_SERVER"] = request.param
    with live_server(tiny_model_dir, log, **env) as s:
        yield s


def _port(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=20)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (Content-Length framed), read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e309", HUGE, "-1e309", "true", '"0.5"'])
def test_v2_threshold_huge_or_non_finite_is_400_and_keeps_the_connection(
    server: LiveServer, value: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=20)
    inp = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
    # The number is spliced in as written: json.dumps cannot write these literals.
    body = json.dumps({"parameters": {"threshold": "X"}, "inputs": [inp]}).replace('"X"', value)
    conn.request("POST", "/v2/models/tiny/infer", body=body)  # no Content-Type, as clients do
    r = conn.getresponse()
    msg = json.loads(r.read())["error"]
    assert r.status == 400 and "parameters.threshold" in msg, msg
    assert "finite number" in msg or "valid number" in msg, msg
    assert r.getheader("connection") != "close"
    sock = conn.sock
    conn.request(
        "POST",
        "/v2/models/tiny/infer",
        body=body.replace(f'"threshold": {value}', '"threshold": 0.5'),
    )
    r = conn.getresponse()
    assert r.status == 200, r.read()
    assert conn.sock is sock  # the same keep-alive connection answered both
    r.read()


@pytest.mark.parametrize("value", ["NaN", "inf", "-inf", "1e309", HUGE])
def test_v1_threshold_huge_or_non_finite_is_422(server: LiveServer, value: str, pngs) -> None:
    r = httpx.post(
        f"{server.url}/v1/classify",
        params={"threshold": value},
        content=pngs[0],
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("query.threshold: Input should be a finite number")


def _count(server: LiveServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def _wait_for(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_client_hanging_up_mid_body_is_499_in_one_log_line(server: LiveServer) -> None:
    route = "/v1/classify"
    before = _count(server, "elf_requests_total", route=route, status="499")
    sock = _connect(server)
    head = f"POST {route} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
    sock.sendall(head.encode() + b"Content-Length: 5000\r\n\r\n" + b"\x89PNG" * 10)
    sock.close()
    _wait_for(lambda: _count(server, "elf_requests_total", route=route, status="499") > before)
    assert _count(server, "elf_requests_total", route=route, status="500") == 0
    logs = server.logs()
    assert "POST /v1/classify: the client hung up before its request body was complete" in logs
    assert "Traceback" not in logs


def test_request_head_over_64_kib_is_431(
    server: LiveServer, request: pytest.FixtureRequest
) -> None:
    ok = httpx.get(f"{server.url}/v2/health/live", headers={"X-Pad": "a" * 60_000})
    assert ok.status_code == 200
    sock = _connect(server)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 200_000)
    status, headers, body = _read_response(sock)
    assert status == 431 and headers["connection"] == "close"
    if request.node.callspec.params["server"] == "uvicorn":  # Granian's (hyper's) 431 is bare
        assert json.loads(body)["error"] == "request line and headers exceed 65536 bytes"
    else:
        assert body == b""
    assert sock.recv(1) == b""  # closed by the server
    sock.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_that_stops_arriving_is_408(server: LiveServer, chunked: bool) -> None:
    sock = _connect(server)
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
        if chunked
        else (b"Content-Length: 5000\r\n\r\nabcd")
    )
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n" + framing)
    start = time.monotonic()
    status, headers, body = _read_response(sock)  # ELF_BODY_TIMEOUT_S=1
    assert status == 408 and headers["connection"] == "close"
    assert "ELF_BODY_TIMEOUT_S" in json.loads(body)["error"]
    assert 0.9 < time.monotonic() - start < 10
    sock.close()


def test_sigterm_with_clients_stalled_mid_body_exits_0_without_tracebacks(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {"ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    with live_server(tiny_model_dir, tmp_path / "s.log", "--graceful-timeout", "1", **env) as s:
        socks = [_connect(s) for _ in range(2)]
        for sock, path in zip(socks, ["/v1/classify", "/v2/models/tiny/infer"], strict=True):
            head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            sock.sendall(head.encode() + b"Content-Length: 900\r\n\r\n{")
        # Both requests are in the app, waiting for their bodies, once this answers (in order).
        assert httpx.get(f"{s.url}/v2/health/live").status_code == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.logs()
        statuses = [_read_response(sock)[0] for sock in socks]
        logs = s.logs()
    assert statuses == [503, 503]
    assert "Traceback" not in logs and "CancelledError" not in logs, logs
    assert logs.count("the server shut down while the request body was arriving") == 2
    assert "Application shutdown complete" in logs


def test_leaving_docs_while_swagger_ui_streams_logs_no_error(server: LiveServer) -> None:
    """A browser that leaves /docs before Swagger UI's JavaScript has arrived: the request was
    whole (a GET), so the hang-up is no 499 and no error: the file stops streaming, nothing
    is logged."""
    path = "/docs/static/swagger-ui-bundle.js"
    before = _count(server, "elf_requests_total", status="200")
    for how in ("close", "reset", "half-close"):
        sock = _connect(server)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        if how == "reset":  # SO_LINGER 0: close sends RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "half-close":
            sock.shutdown(socket.SHUT_WR)
            sock.recv(16)
        sock.close()
    # Counted once each handler returned (the metrics middleware's finally).
    _wait_for(lambda: _count(server, "elf_requests_total", status="200") >= before + 3)
    logs = server.logs()
    assert (
        "Traceback" not in logs and "ERROR" not in logs and "response already started" not in logs
    )
