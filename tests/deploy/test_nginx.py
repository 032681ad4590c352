"""docker/nginx/nginx.conf: nginx accepts it, and it proxies a real elf-serve correctly.

Debian's nginx (1.22) checks the file as it is. For the live test the backend name `elf-server`
(resolved by Docker's DNS in compose) becomes the loopback address of the test server and the
listen port a free one; everything else (body limits, headers, retries, the /metrics block) is
the file's own. Spreading requests over several replicas needs Docker's DNS and is not tested here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.deploy import procs
from tests.deploy.conftest import LiveServer
from tests.deploy.queries import REPO
from tests.server.live import free_port
from tests.server.tiny_model import fixture_pixels, png_bytes

CONF = REPO / "docker" / "nginx" / "nginx.conf"


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def adapted_config(
    directory: Path, backend: str, port: int, grpc_backend: str = "127.0.0.1:9", grpc_port: int = 0
) -> Path:
    text = CONF.read_text()
    text = _replace_once(text, "http://elf-server:8000;", f"http://{backend};")
    text = _replace_once(text, "listen 8080;", f"listen 127.0.0.1:{port};")
    text = _replace_once(text, "grpc://elf-server:8001;", f"grpc://{grpc_backend};")
    text = _replace_once(text, "listen 8081 http2;", f"listen 127.0.0.1:{grpc_port} http2;")
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = _replace_once(text, "http {\n", f"http {{\n{temp}\n")
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    argv = [procs.executable("nginx"), "-t", "-p", str(tmp_path), "-c", str(CONF), "-e", "stderr"]
    argv += ["-g", f"pid {tmp_path / 'nginx.pid'};"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def _classify_count(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    labels = r'protocol="http",route="/v1/classify",status="200"'
    m = re.search(r"^elf_requests_total\{" + labels + r"\} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.integration
def test_nginx_proxies_to_the_server(live_server: LiveServer, tmp_path: Path) -> None:
    port = free_port()
    config = adapted_config(tmp_path, f"127.0.0.1:{live_server.port}", port, grpc_port=free_port())
    base = f"http://127.0.0.1:{port}"
    pngs = [png_bytes(p) for p in fixture_pixels(3)]
    with procs.nginx(config, tmp_path, port, tmp_path / "nginx.log"), httpx.Client(timeout=30) as c:
        before = _classify_count(live_server)
        files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
        answer = c.post(f"{base}/v1/classify", files=files)
        assert answer.status_code == 200, answer.text
        assert [r["exit"]["count"] for r in answer.json()["results"]] == [3, 3, 3]
        assert _classify_count(live_server) == before + 1  # it reached the server, once

        assert c.get(f"{base}/v2/health/ready").status_code == 200
        metrics = c.get(f"{base}/metrics")
        assert metrics.status_code == 404 and "error" in metrics.json()

        # Above the server's 10 MiB limit but below nginx's: the server's JSON error comes back.
        big = c.post(
            f"{base}/v1/classify", content=b"\0" * (11 << 20), headers={"content-type": "image/png"}
        )
        assert big.status_code == 413 and "error" in big.json(), big.text
