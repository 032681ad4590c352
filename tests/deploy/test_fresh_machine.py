"""The fresh-machine proof: a clone of this repository in a container of the bare base image
(Debian bookworm with python3 and make, nothing else: docker/build-local.sh base).

`make serve` must set itself up from nothing and answer a classify; then the set-up half of
`make test` (`make system dev`: the Debian packages the tests use, then the venv with torch, the
project and the dev tools) and the server and export test modules must pass there. The whole
`make test` does not fit CI's budget a second time (the container tests are deselected by their
marker anyway: no engine inside the engine).
Like every machine of this kind, the container gets the machine's torch CPU wheel (/opt/wheels,
read-only, as PIP_FIND_LINKS); everything else comes from PyPI.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import FACTS
from tests.deploy.containers import EXAMPLES, classify, container, unique, wait_ready
from tests.deploy.engine import Engine
from tests.deploy.procs import executable
from tests.deploy.queries import REPO
from tests.server.live import free_port

# The first test of a session also waits for the image builds (tests/deploy/conftest.py).
pytestmark = [
    pytest.mark.container,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]

BASE = "local/python:3.11-bookworm"
WHEELS = Path("/opt/wheels")
TEST_MODULES = ("tests/server", "tests/model_export")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """git clone of this checkout's HEAD: what a fresh machine would check out."""
    out = tmp_path_factory.mktemp("fresh") / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(out)], check=True, timeout=120)
    return out


def _options(clone: Path) -> tuple[str, ...]:
    wheels = ("-v", f"{WHEELS}:{WHEELS}:ro", "-e", f"PIP_FIND_LINKS={WHEELS}")
    return ("-v", f"{clone}:/src", "-w", "/src", *(wheels if WHEELS.is_dir() else ()))


def test_base_image_is_bare(images: Engine) -> None:
    probe = "for c in python3 make pip gcc git docker; do command -v $c; done; python3 -V"
    out = images.docker("run", "--rm", "--network", "none", BASE, "sh", "-c", probe)
    assert out.splitlines() == ["/usr/bin/python3", "/usr/bin/make", "Python 3.11.2"], out


def test_make_serve_from_nothing_answers(
    images: Engine, clone: Path, venv_answers: dict[str, dict[str, Any]]
) -> None:
    port = free_port()
    command = ("make", "serve", "HOST=127.0.0.1", f"PORT={port}")
    start = time.monotonic()
    with container(images, BASE, *command, options=_options(clone)) as name:
        url = f"http://127.0.0.1:{port}"
        wait_ready(images, name, f"{url}/v2/health/ready", timeout=900)
        FACTS["fresh machine: make serve to ready"] = f"{time.monotonic() - start:.0f} s"
        [answer] = classify(url, EXAMPLES[:1])
        del answer["index"]
        assert answer == venv_answers[EXAMPLES[0].name]


def test_make_dev_and_the_server_and_export_tests_pass(images: Engine, clone: Path) -> None:
    script = "make system dev && .venv/bin/pytest -q -p no:cacheprovider -m 'not container' "
    script += " ".join(TEST_MODULES)
    start = time.monotonic()
    name = unique("elf-fresh")
    try:
        proc = subprocess.run(
            [
                executable("docker"), "run", "--name", name, "--network", "host",
                *_options(clone), BASE, "sh", "-c", script,
            ],
            env=images.env(),
            capture_output=True,
            text=True,
            timeout=2400,
            check=False,
        )  # fmt: skip
    finally:
        images.docker("rm", "-f", "-v", name, check=False)
    FACTS["fresh machine: make dev + server/export tests"] = f"{time.monotonic() - start:.0f} s"
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, tail
