"""docker-compose.yml run for real, with the test-only override docker-compose.test.yml.

The override swaps the upstream nginx and Prometheus images for the locally built ones and puts
every service on host networking (one server replica on a free loopback port; the nginx and
Prometheus configs adapted to it exactly as the loopback tests of test_nginx.py and
test_prometheus_live.py adapt them). Debian's docker-compose 1.29 starts server, nginx and
Prometheus; through nginx the example images must get the venv server's answers, and
Prometheus' HTTP API must count them in sum(elf_exits_total) and have every alert rule loaded
and evaluated. Grafana cannot be installed here: its dashboard is checked by test_dashboard.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.compose_merge import merged_file
from tests.deploy.conftest import FACTS
from tests.deploy.containers import EXAMPLES, classify_examples, unique, wait_healthy
from tests.deploy.engine import Engine
from tests.deploy.queries import REPO, rule_queries
from tests.deploy.test_prometheus_live import PromAPI
from tests.deploy.test_prometheus_live import adapted_config as prometheus_config
from tests.server.live import free_port

# The first test of a session also waits for the image builds (tests/deploy/conftest.py).
pytestmark = [
    pytest.mark.container,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _nginx_config(path: Path, backend: str, port: int) -> Path:
    """docker/nginx/nginx.conf with the compose DNS name and the listen port on loopback."""
    text = (REPO / "docker" / "nginx" / "nginx.conf").read_text()
    for old, new in [
        ("http://elf-server:8000;", f"http://{backend};"),
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


class Compose:
    def __init__(self, engine: Engine, file: Path, variables: dict[str, str]) -> None:
        exe = shutil.which("docker-compose")
        assert exe is not None, "docker-compose is not installed (Debian package docker-compose)"
        self.project = unique("elfstack").replace("-", "")
        self.argv = [exe, "-p", self.project, "--project-directory", str(REPO), "-f", str(file)]
        clean = {k: v for k, v in engine.env().items() if not k.startswith(("ELF_", "COMPOSE_"))}
        self.env = {**clean, **variables}

    def __call__(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [*self.argv, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"docker-compose {' '.join(args)}:\n{proc.stderr[-4000:]}"
        return proc.stdout


def _wait_for_rules(prom: PromAPI, timeout: float = 120) -> list[dict[str, Any]]:
    """Every rule of /api/v1/rules once each has been evaluated (health no longer 'unknown')."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        if rules and all(r["health"] != "unknown" for r in rules):
            return rules
        assert time.monotonic() < deadline, f"rules not evaluated after {timeout} s: {rules}"
        time.sleep(0.5)


def test_compose_stack_serves_through_nginx_and_is_counted_by_prometheus(
    images: Engine, venv_answers: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    server_port, nginx_port, prom_port = _ports(3)
    config = tmp_path / "config"
    (config / "prometheus").mkdir(parents=True)
    prometheus_config(config / "prometheus", f"127.0.0.1:{server_port}", prom_port)
    _nginx_config(config / "nginx.conf", f"127.0.0.1:{server_port}", nginx_port)
    for path in [config, *config.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # read by the images' own users
    merged = merged_file(
        REPO / "docker-compose.yml", REPO / "docker-compose.test.yml", tmp_path / "compose.yml"
    )
    compose = Compose(
        images,
        merged,
        {
            "ELF_TEST_CONFIG_DIR": str(config),
            "ELF_TEST_SERVER_PORT": str(server_port),
            "ELF_TEST_PROMETHEUS_PORT": str(prom_port),
        },
    )
    start = time.monotonic()
    try:
        compose("up", "-d", "--no-build", "server", "nginx", "prometheus")
        wait_healthy(images, f"{compose.project}_server_1")
        FACTS["compose stack: up to healthy server"] = f"{time.monotonic() - start:.0f} s"
        services = compose("ps", "--services", "--filter", "status=running").split()
        assert sorted(services) == ["nginx", "prometheus", "server"]

        nginx = f"http://127.0.0.1:{nginx_port}"
        assert httpx.get(f"{nginx}/nginx/health", timeout=10).status_code == 200
        answers = classify_examples(nginx, per_request=4)
        assert answers.keys() == venv_answers.keys()
        for file, answer in answers.items():
            answer.pop("name")  # files[i] counts within the request
            expected = {k: v for k, v in venv_answers[file].items() if k != "name"}
            assert answer == expected, file
        # /metrics is not proxied (the scrape goes to the replicas directly).
        assert httpx.get(f"{nginx}/metrics", timeout=10).status_code == 404

        prom = PromAPI(f"http://127.0.0.1:{prom_port}")
        prom.wait_for('sum(up{job="elf-server"})', 1)
        prom.wait_for("sum(elf_exits_total)", len(EXAMPLES))
        assert prom.scalar("sum(elf_images_total)") == len(EXAMPLES)
        rules = _wait_for_rules(prom)
        alerts = {r["name"] for r in rules if r["type"] == "alerting"}
        assert alerts == {q.where.removeprefix("alert ") for q in rule_queries("alert")}
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
    finally:
        compose("down", "-v", "--timeout", "35", timeout=180)
