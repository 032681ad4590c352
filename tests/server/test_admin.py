"""PUT /v1/models/{name}/thresholds: bearer auth, validation, effect on answers and gauges."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from elf_core.manifest import load_manifest
from server.app import create_app
from tests.server.conftest import ADMIN_TOKEN, files, make_settings

URL = "/v1/models/tiny/thresholds"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def gauge(client: TestClient, k: int) -> float:
    prefix = f'elf_exit_threshold{{exit="{k}",model="tiny"}} '
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix))
    return float(line.split()[-1])


def test_disabled_without_a_configured_token(tiny_model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tiny_model_dir, admin_token=None))) as c:
        r = c.put(URL, json={"thresholds": [0.5, 0.5]}, headers=AUTH)
        assert r.status_code == 404 and "disabled" in r.json()["error"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Token abc"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"Authorization": "Bearer wrong-token"}, 403),
    ],
)
def test_auth_is_checked_before_anything_else(
    client: TestClient, tiny_model_dir: Path, headers: dict[str, str], status: int
) -> None:
    # An invalid body and an unknown model: auth still answers first.
    for url in (URL, "/v1/models/nope/thresholds"):
        r = client.put(url, json={"thresholds": "x"}, headers=headers)
        assert r.status_code == status, r.text
        assert list(r.json()) == ["error"]
        if status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert gauge(client, 0) == pytest.approx(load_manifest(tiny_model_dir).thresholds[0])


def test_update_changes_answers_gauges_and_detail(
    client: TestClient, pngs: list[bytes], tiny_model_dir: Path
) -> None:
    manifest = load_manifest(tiny_model_dir)
    assert gauge(client, 0) == pytest.approx(manifest.thresholds[0])
    r = client.put(URL, json={"thresholds": [0.0, 0.0]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "tiny",
        "thresholds": [0.0, 0.0, 0.0],
        "previous": manifest.thresholds,
    }
    assert gauge(client, 0) == 0.0 and gauge(client, 1) == 0.0
    res = client.post("/v1/classify", files=files(pngs[:8])).json()["results"]
    assert [x["exit"]["index"] for x in res] == [0] * 8
    detail = client.get("/v1/models/tiny").json()
    assert detail["thresholds"] == [0.0, 0.0, 0.0]
    assert detail["exits"][0]["calibrated_threshold"] == manifest.thresholds[0]
    # K values are accepted when the last is 0; exit=final still bypasses them.
    r = client.put(URL, json={"thresholds": [1.0, 1.0, 0.0]}, headers=AUTH)
    assert r.status_code == 200 and gauge(client, 1) == 1.0
    res = client.post("/v1/classify", files=files(pngs[:4])).json()["results"]
    assert [x["exit"]["index"] for x in res] == [2] * 4


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"thresholds": [0.5]}, 400, "send 2 or 3 thresholds"),
        ({"thresholds": [0.5, 0.5, 0.5]}, 400, "must be 0"),
        ({"thresholds": [0.5, 1.5]}, 422, "less than or equal to 1"),
        ({"thresholds": []}, 422, "thresholds"),
        ({"thresholds": [0.5, 0.5], "extra": 1}, 422, "extra"),
    ],
)
def test_invalid_updates_are_refused(
    client: TestClient, body: dict, status: int, message: str
) -> None:
    before = client.get("/v1/models/tiny").json()["thresholds"]
    r = client.put(URL, json=body, headers=AUTH)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert client.get("/v1/models/tiny").json()["thresholds"] == before


def test_unknown_model_with_a_good_token_is_404(client: TestClient) -> None:
    r = client.put("/v1/models/nope/thresholds", json={"thresholds": [0.5, 0.5]}, headers=AUTH)
    assert r.status_code == 404
