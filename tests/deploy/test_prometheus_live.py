"""A real Prometheus scrapes a real elf-serve with the project's scrape config and rules.

The config is docker/prometheus/prometheus.yml with one change: the DNS service discovery of the
compose network becomes a static target on loopback (and the intervals 1 s, to keep the test
short). Traffic goes in two halves with a scrape between them, so that rates over the last
minute are not zero; Prometheus must then count exactly the images sent and the FLOPs the answers
reported, every dashboard query must return data, and every rule expression must evaluate.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy import procs
from tests.deploy.queries import REPO, concrete, dashboard_queries, rule_queries
from tests.server.live import free_port
from tests.server.tiny_model import fixture_pixels, png_bytes

PROM_DIR = REPO / "docker" / "prometheus"
IMAGES_PER_REQUEST = 4
REQUESTS_PER_HALF = 6
HALF = IMAGES_PER_REQUEST * REQUESTS_PER_HALF


def adapted_config(directory: Path, server: str, prometheus_port: int) -> Path:
    """The project's config with a static loopback target instead of DNS discovery."""
    config: dict[str, Any] = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        if job["job_name"] == "elf-server":
            assert job.pop("dns_sd_configs")[0]["port"] == 8000
            job["static_configs"] = [{"targets": [server]}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    assert config["rule_files"] == ["rules.yml"]
    shutil.copy(PROM_DIR / "rules.yml", directory / "rules.yml")
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    check = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return path


class PromAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        data: dict[str, Any] = body["data"]
        return data

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, want: float, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.scalar(expr)
            if got == want:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr} = {got} after {timeout} s, expected {want}")


def send_half(client: httpx.Client, url: str, pngs: list[bytes]) -> int:
    """REQUESTS_PER_HALF multi-image requests and one bad image; FLOPs executed, summed."""
    flops = 0
    for r in range(REQUESTS_PER_HALF):
        batch = pngs[r * IMAGES_PER_REQUEST : (r + 1) * IMAGES_PER_REQUEST]
        files = [("files", (f"{r}_{i}.png", png, "image/png")) for i, png in enumerate(batch)]
        response = client.post(f"{url}/v1/classify", files=files)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == IMAGES_PER_REQUEST
        flops += sum(item["flops"]["executed"] for item in results)
    bad = client.post(f"{url}/v1/classify", files={"file": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 400, bad.text
    return flops


@pytest.mark.integration
def test_prometheus_counts_the_traffic_and_evaluates_every_query(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    server_port, prom_port = free_port(), free_port()
    while prom_port == server_port:
        prom_port = free_port()
    server = f"http://127.0.0.1:{server_port}"
    config = adapted_config(tmp_path, f"127.0.0.1:{server_port}", prom_port)
    pngs = [png_bytes(p) for p in fixture_pixels(HALF)]
    with (
        procs.serve(tiny_model_dir, server_port, tmp_path / "elf-serve.log"),
        procs.prometheus(config, tmp_path / "tsdb", prom_port, tmp_path / "prometheus.log"),
        httpx.Client(timeout=30) as client,
    ):
        prom = PromAPI(f"http://127.0.0.1:{prom_port}")
        prom.wait_for('sum(up{job="elf-server"})', 1)
        flops = send_half(client, server, pngs)
        prom.wait_for("sum(elf_exits_total)", HALF)
        flops += send_half(client, server, pngs)
        prom.wait_for("sum(elf_exits_total)", 2 * HALF)
        assert prom.scalar("sum(elf_images_total)") == 2 * HALF
        assert prom.scalar("sum(elf_flops_executed_total)") == flops
        assert prom.scalar('sum(elf_rejected_total{reason="bad_image"})') == 2

        for query in dashboard_queries():
            data = prom.query(concrete(query.expr))
            values = [float(s["value"][1]) for s in data["result"]]
            assert values, f"{query.where}: no data for {concrete(query.expr)}"
            assert any(math.isfinite(v) for v in values), f"{query.where}: {values}"
        for query in rule_queries("alert") + rule_queries("record"):
            assert prom.query(query.expr)["resultType"] == "vector", query.where
