"""The images built and run for real on a private engine (marker `container`; root; minutes).

docker/build-local.sh builds every image once per session (tests/deploy/conftest.py `images`).
The serving image must run as its non-root user, turn healthy by its own HEALTHCHECK, answer the
16 example images exactly as elf-serve from this venv does, count them in /metrics and exit 0 on
`docker stop` well within the grace period. The training image trains one epoch on a generated
image folder and exports a model into a volume that the serving image then serves.
Containers use host networking; every port is a free loopback port.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import FACTS
from tests.deploy.containers import (
    EXAMPLES,
    classify,
    classify_examples,
    container,
    metric_value,
    unique,
    wait_healthy,
)
from tests.deploy.engine import Engine
from tests.server.live import free_port
from tests.training.conftest import write_image_folder

# The first test of a session also waits for the image builds (tests/deploy/conftest.py).
pytestmark = [
    pytest.mark.container,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]

SERVING = "elf-serving:cpu"
TRAIN = "elf-train:cpu"
# docker-compose.yml's stop_grace_period: longer than elf-serve's --graceful-timeout (30 s).
GRACE_S = 35


@pytest.fixture(scope="module")
def serving(images: Engine) -> Iterator[tuple[str, str]]:
    """The serving image as built, on a free port; (container name, base URL), once healthy."""
    port = free_port()
    command = ("elf-serve", "--host", "127.0.0.1", "--port", str(port))
    with container(images, SERVING, *command) as name:
        start = time.monotonic()
        wait_healthy(images, name)
        FACTS["serving container: start to healthy"] = f"{time.monotonic() - start:.1f} s"
        yield name, f"http://127.0.0.1:{port}"


def test_serving_image_runs_as_non_root_and_is_healthy(
    images: Engine, serving: tuple[str, str]
) -> None:
    name, _ = serving
    info = images.inspect(name)
    assert info["Config"]["User"] == "elf"
    status = images.docker("exec", name, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status  # real, effective, saved, filesystem
    cmdline = images.docker("exec", name, "cat", "/proc/1/cmdline")
    assert "elf-serve" in cmdline
    health = info["State"]["Health"]
    assert health["Status"] == "healthy"
    assert health["Log"][-1]["ExitCode"] == 0


def test_serving_image_answers_like_the_venv_server(
    serving: tuple[str, str], venv_answers: dict[str, dict[str, Any]]
) -> None:
    _, url = serving
    assert len(EXAMPLES) == 16
    before = httpx.get(f"{url}/metrics", timeout=10).text
    sample = 'elf_images_total{model="fashion-mnist-lt",version="1"}'
    sent_before = metric_value(before, sample) if sample in before else 0.0
    answers = classify_examples(url)
    assert answers == venv_answers
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metric_value(metrics.text, sample) == sent_before + 16


def test_serving_image_size_and_contents(images: Engine) -> None:
    size_mb = images.inspect(SERVING, image=True)["Size"] / 1e6
    FACTS[f"{SERVING} size"] = f"{size_mb:.0f} MB"
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('torch', 'onnx', 'training', 'tests') if u.find_spec(m)])"
    )
    found = images.docker("run", "--rm", "--network", "none", SERVING, "python", "-c", probe)
    assert found == "[]"
    assert size_mb < 800, size_mb  # torch alone would add about 700 MB


def test_docker_stop_exits_zero_within_the_grace_period(
    images: Engine, serving: tuple[str, str]
) -> None:
    name, url = serving
    assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    start = time.monotonic()
    images.docker("stop", "--time", str(GRACE_S), name, timeout=GRACE_S + 30)
    took = time.monotonic() - start
    FACTS["serving container: docker stop"] = f"{took:.1f} s"
    state = images.inspect(name)["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert took < GRACE_S, took  # SIGTERM handled, not the SIGKILL after the grace period
    assert "batchers stopped" in images.logs(name)


def test_training_image_exports_a_model_the_serving_image_serves(
    images: Engine, tmp_path: Path
) -> None:
    data = write_image_folder(tmp_path / "data")
    volume = unique("elf-model")
    images.docker("volume", "create", volume)
    try:
        train = (
            "elf-train --dataset folder --data-root /data --channels 1 --arch resnet8 "
            "--width-mult 0.5 --batch-size 8 --eval-batch-size 16 --threads 1 --no-progress "
            "--log-level WARNING --epochs 1 --out /srv/elf/run && "
            "elf-export --checkpoint /srv/elf/run/checkpoint.pt --out /srv/elf/models/tiny "
            "--version 7 --no-progress"
        )
        start = time.monotonic()
        images.docker(
            "run", "--rm", "--network", "host", "-v", f"{data}:/data:ro",
            "-v", f"{volume}:/srv/elf", TRAIN, "sh", "-c", train, timeout=900,
        )  # fmt: skip
        FACTS["training container: 1 epoch + export"] = f"{time.monotonic() - start:.0f} s"
        port = free_port()
        options = ("-v", f"{volume}:/models:ro", "-e", "ELF_MODEL_DIR=/models/models/tiny")
        command = ("elf-serve", "--host", "127.0.0.1", "--port", str(port))
        with container(images, SERVING, *command, options=options) as name:
            wait_healthy(images, name)
            url = f"http://127.0.0.1:{port}"
            model = httpx.get(f"{url}/v1/models/tiny", timeout=10).json()
            assert model["version"] == "7" and model["class_names"] == [
                "class0",
                "class1",
                "class2",
            ]
            tests = sorted((data / "test").rglob("*.png"))
            answers = classify(url, tests)
            assert {a["label"] for a in answers} <= {"class0", "class1", "class2"}
            assert len(answers) == len(tests)
            assert all(a["exit"]["count"] == len(model["exits"]) for a in answers)
    finally:
        images.docker("volume", "rm", "-f", volume, check=False)
