"""/docs works offline: Swagger UI's assets come from the server (a Python package), and headless
Chromium, kept off the network, renders the classify and infer operations from /openapi.json."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.server.live import LiveServer

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"


def test_docs_page_uses_only_local_assets(served: LiveServer) -> None:
    html = httpx.get(f"{served.url}/docs").text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith("/docs/static/") for u in urls), urls
    for url in urls:
        r = httpx.get(served.url + url)
        assert r.status_code == 200 and len(r.content) > 100, url
    assert "cdn" not in html.lower()


def test_headless_chromium_renders_the_operations(served: LiveServer, tmp_path: Path) -> None:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        # Only the server may be reached: every other host resolves nowhere.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        f"{served.url}/docs",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # Swagger UI writes one opblock per operation, with its method and path.
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    for want in ("/v1/classify", "/v1/models/{name}/classify", "/v2/models/{name}/infer"):
        assert want in paths, sorted(paths)
    assert 'class="opblock-summary-method">POST' in dom or "opblock-post" in dom
