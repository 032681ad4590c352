"""What outside probes found, answered as a user expects, against real elf-serve processes:
malformed numeric headers are 400, the admin token is checked before the body is read,
thresholds are JSON numbers, an internal error's text stays in the log (the schema's strictness:
tests/server/test_openapi_fuzz.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ADMIN_TOKEN
from tests.server.faulty_serve import SECRET
from tests.server.live import LiveServer, live_command
from tests.server.tiny_model import fixture_pixels, png_bytes

pytestmark = pytest.mark.integration

BAD_COUNTS = {"5,000 digits": b"9" * 5000, "superscript two": "²".encode("latin-1")}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("value", list(BAD_COUNTS))
def test_malformed_inference_header_length_is_400(served: LiveServer, value: str) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [0]}]}
    )
    r = httpx.post(
        f"{served.url}/v2/models/tiny/infer",
        content=body.encode(),
        headers={b"Inference-Header-Content-Length": BAD_COUNTS[value]},
    )
    assert r.status_code == 400, r.text
    assert "Inference-Header-Content-Length" in r.json()["error"]
    assert "is not a byte count" in r.json()["error"]


def test_admin_token_is_checked_before_the_body(admin_server: LiveServer) -> None:
    url = f"{admin_server.url}/v1/models/tiny/thresholds"
    for body in (b"{not json", b'{"thresholds": "x"}', b""):
        assert httpx.put(url, content=body).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert httpx.put(url, content=body, headers=wrong).status_code == 403
        assert httpx.put(url, content=body, headers=AUTH).status_code == 422


@pytest.mark.parametrize(
    "thresholds", [["0.5", "0.5"], [True, False], [0.5, None], [0.5, 1e309]], ids=str
)
def test_thresholds_must_be_json_numbers(
    admin_server: LiveServer, thresholds: list[object]
) -> None:
    url = f"{admin_server.url}/v1/models/tiny/thresholds"
    before = httpx.get(f"{admin_server.url}/v1/models/tiny").json()["thresholds"]
    content = json.dumps({"thresholds": thresholds}).replace("Infinity", "1e309")
    r = httpx.put(url, content=content, headers=AUTH)
    assert r.status_code == 422, r.text
    assert "body.thresholds.0" in r.json()["error"] or "body.thresholds.1" in r.json()["error"]
    assert httpx.get(f"{admin_server.url}/v1/models/tiny").json()["thresholds"] == before
    # The v2 request parameter follows the same rule (one rule, server/schemas/threshold.py).
    v2 = {"parameters": {"threshold": thresholds[0]}, "inputs": []}
    r2 = httpx.post(f"{admin_server.url}/v2/models/tiny/infer", json=v2)
    assert r2.status_code == 400
    if thresholds[0] != 0.5:
        assert "parameters.threshold" in r2.json()["error"]


def test_an_internal_error_keeps_its_text_in_the_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.server.faulty_serve"]
    env = {"ELF_WARMUP_ALL_BATCH_SIZES": "false", "ELF_MAX_BATCH_SIZE": "4"}
    with live_command(command, tiny_model_dir, tmp_path / "serve.log", **env) as server:
        png = png_bytes(fixture_pixels(1)[0])
        r = httpx.post(f"{server.url}/v1/classify", files={"file": ("x.png", png, "image/png")})
        assert r.status_code == 500
        assert r.json() == {"error": "internal error (logged by the server)"}
        assert SECRET not in r.text and "RuntimeError" not in r.text
        assert SECRET in server.logs()  # the operator still sees why
