"""docker-compose.yml, validated by Debian's docker-compose (1.29) and read back as resolved.

`docker-compose config` interpolates variables, applies the YAML anchors and checks the file
against the Compose schema; no engine is needed. The resolved file is then checked for what
scaling needs (no container name, no fixed host port, the shared DNS alias), the GPU profile,
the read-only model mount driven by one variable, and the files the other services mount.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALIAS = "elf-server"


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    assert exe is not None, "docker-compose is not installed (Debian package docker-compose)"
    # Only this test's variables: a developer's ELF_* or .env must not change the result.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ELF_", "COMPOSE_"))}
    proc = subprocess.run(
        [
            exe,
            "--project-directory",
            str(REPO),
            "-f",
            str(REPO / "docker-compose.yml"),
            *args,
            "config",
        ],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def gpu_config() -> dict[str, Any]:
    return compose_config("--profile", "gpu")


def test_services_and_volumes(config: dict[str, Any], gpu_config: dict[str, Any]) -> None:
    expected = {"server", "server-gpu", "nginx", "prometheus", "grafana"}
    assert set(config["services"]) == expected
    assert set(gpu_config["services"]) == expected
    assert set(config["volumes"]) == {"prometheus-data", "grafana-data"}
    mounted = {
        v.split(":")[0]
        for s in config["services"].values()
        for v in s.get("volumes", [])
        if not v.startswith("/")
    }
    assert mounted == {"prometheus-data", "grafana-data"}


@pytest.mark.parametrize("name", ["server", "server-gpu"])
def test_server_can_scale(config: dict[str, Any], name: str) -> None:
    svc = config["services"][name]
    assert "container_name" not in svc
    assert "ports" not in svc  # a fixed host port would collide with --scale
    assert svc["expose"] == ["8000", "8001"]  # HTTP, gRPC
    assert ALIAS in svc["networks"]["default"]["aliases"]
    assert svc["environment"]["ELF_MODEL_DIR"] == "/models/fashion-mnist-lt"
    assert svc["volumes"] == [f"{REPO / 'models'}:/models:ro"]
    # Unset in the shell -> unset in the container (an empty token must not enable the admin API).
    assert svc["environment"]["ELF_ADMIN_TOKEN"] is None


def test_cpu_default_and_gpu_profile(config: dict[str, Any], gpu_config: dict[str, Any]) -> None:
    cpu, gpu = config["services"]["server"], gpu_config["services"]["server-gpu"]
    assert "profiles" not in cpu
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile"
    assert cpu["environment"]["ELF_PROVIDERS"] == "cpu"
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["environment"]["ELF_PROVIDERS"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    for svc in ("nginx", "prometheus", "grafana"):
        assert "profiles" not in config["services"][svc]


def test_one_variable_picks_the_model() -> None:
    custom = compose_config(env={"ELF_MODEL": "my-model", "ELF_MODELS_DIR": "/srv/models"})
    for name in ("server", "server-gpu"):
        svc = custom["services"][name]
        assert svc["environment"]["ELF_MODEL_DIR"] == "/models/my-model"
        assert svc["volumes"] == ["/srv/models:/models:ro"]


def test_published_ports_and_bind_address() -> None:
    default = compose_config()["services"]
    assert default["nginx"]["ports"] == ["127.0.0.1:8080:8080/tcp", "127.0.0.1:8081:8081/tcp"]
    assert default["prometheus"]["ports"] == ["127.0.0.1:9090:9090/tcp"]
    assert default["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]
    env = {"ELF_BIND_ADDRESS": "0.0.0.0", "ELF_HTTP_PORT": "80", "ELF_GRPC_PUBLISHED_PORT": "81"}
    moved = compose_config(env=env)
    assert moved["services"]["nginx"]["ports"] == ["0.0.0.0:80:8080/tcp", "0.0.0.0:81:8081/tcp"]


def test_bind_mounts_exist_in_repo(config: dict[str, Any]) -> None:
    for name, svc in config["services"].items():
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("/") and not host.endswith("/models"):
                assert Path(host).exists(), f"{name}: {host}"
        if "build" in svc:
            assert (Path(svc["build"]["context"]) / svc["build"]["dockerfile"]).is_file()


def test_discovery_names_agree() -> None:
    """nginx and Prometheus find the replicas by the alias every server container carries."""
    nginx = (REPO / "docker/nginx/nginx.conf").read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11\b", nginx, re.M)
    backend = re.search(r"set \$elf_backend http://([a-z-]+):(\d+);", nginx)
    assert backend is not None and backend.groups() == (ALIAS, "8000")
    assert "proxy_pass $elf_backend;" in nginx  # through the variable: resolved per request
    prom = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "elf-server")
    assert job["dns_sd_configs"] == [
        {"names": [ALIAS], "type": "A", "port": 8000, "refresh_interval": "10s"}
    ]
