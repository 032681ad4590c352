"""One state across workers: a real `elf-serve --workers 2` with ELF_STATE_DIR, under uvicorn and
under Granian (each spawns its worker processes; Prometheus multiprocess mode in both).

One PUT must reach both workers (each worker's elf_exit_threshold series, labelled with its pid
in multiprocess mode, shows the new value), every one of 40 answers then uses the new
thresholds, one scrape counts all 40 images, and a restart on the same state directory starts
from the overrides.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import ADMIN_TOKEN
from tests.server.live import live_server
from tests.server.tiny_model import fixture_pixels, png_bytes

NEW = [0.01, 0.02]  # below any softmax maximum of 10 classes: every image leaves at exit 0
REQUESTS = 40


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def worker_thresholds(url: str) -> dict[str, float]:
    """pid -> exit 0's threshold in that worker."""
    return {
        labels["pid"]: value
        for labels, value in samples(url, "elf_exit_threshold")
        if labels["exit"] == "0"
    }


def wait_until(check: object, timeout_s: float, what: str) -> float:
    """Poll check() until it is true; the seconds it took (bounded wait, not a sleep)."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


def classify(url: str, png: bytes) -> dict[str, object]:
    r = httpx.post(f"{url}/v1/classify", files={"file": ("x.png", png, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    result: dict[str, object] = r.json()["results"][0]
    return result


@pytest.mark.integration
@pytest.mark.parametrize("http_server", ["uvicorn", "granian"])
def test_two_workers_share_thresholds_metrics_and_restart(
    tiny_model_dir: Path, tmp_path: Path, http_server: str
) -> None:
    state, prom_dir = tmp_path / "state", tmp_path / "prom"
    env = {
        "ELF_WORKERS": "2",
        "ELF_STATE_DIR": str(state),
        "ELF_ADMIN_TOKEN": ADMIN_TOKEN,
        "ELF_WARMUP_ALL_BATCH_SIZES": "false",
        "ELF_MAX_BATCH_SIZE": "8",
        "ELF_INTRA_OP_THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "ELF_HTTP_SERVER": http_server,
    }
    pngs = [png_bytes(p) for p in fixture_pixels(REQUESTS)]
    with live_server(tiny_model_dir, tmp_path / "serve.log", **env) as server:
        # Ready means one worker answered; wait for both to have loaded the model.
        wait_until(lambda: len(worker_thresholds(server.url)) == 2, 60, "two workers")
        before = worker_thresholds(server.url)
        assert all(v != NEW[0] for v in before.values()), before
        r = httpx.put(
            f"{server.url}/v1/models/tiny/thresholds",
            json={"thresholds": NEW},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        took = wait_until(
            lambda: set(worker_thresholds(server.url).values()) == {NEW[0]}, 5, "propagation"
        )
        # The poller looks every 0.25 s; 2 s leaves room for a loaded CI machine.
        assert took < 2.0, took
        assert set(worker_thresholds(server.url)) == set(before)  # the same two workers

        with ThreadPoolExecutor(4) as pool:  # new connections, spread over both workers
            results = list(pool.map(lambda p: classify(server.url, p), pngs))
        assert [res["exit"] for res in results] == [
            {"index": 0, "count": 3, "threshold": NEW[0]}
        ] * REQUESTS
        images = samples(server.url, "elf_images_total")
        assert images == [({"model": "tiny", "version": "0.0.1-test"}, float(REQUESTS))]
        exits = {lab["exit"]: v for lab, v in samples(server.url, "elf_exits_total")}
        assert exits == {"0": float(REQUESTS)}
        on_disk = (state / "thresholds.json").read_text()
        assert '"version": "0.0.1-test"' in on_disk

    env["ELF_WORKERS"] = "1"
    with live_server(tiny_model_dir, tmp_path / "restart.log", **env) as server:
        detail = httpx.get(f"{server.url}/v1/models/tiny", timeout=10).json()
        assert detail["thresholds"] == [*NEW, 0.0]
        assert classify(server.url, pngs[0])["exit"] == {"index": 0, "count": 3, "threshold": 0.01}
        # A fresh run starts its counters from zero (the multiprocess directory was emptied).
        assert samples(server.url, "elf_images_total") == [
            ({"model": "tiny", "version": "0.0.1-test"}, 1.0)
        ]


@pytest.mark.integration
def test_two_workers_without_a_state_dir_share_a_private_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No ELF_STATE_DIR: elf-serve makes one for the run, every worker follows it (all 40
    answers after one PUT use the new thresholds), and it is gone after the run."""
    env = {
        "ELF_WORKERS": "2",
        "ELF_ADMIN_TOKEN": ADMIN_TOKEN,
        "ELF_WARMUP_ALL_BATCH_SIZES": "false",
        "ELF_MAX_BATCH_SIZE": "8",
        "ELF_INTRA_OP_THREADS": "1",
        "TMPDIR": str(tmp_path),  # where the private directory is made
    }
    pngs = [png_bytes(p) for p in fixture_pixels(REQUESTS)]
    with live_server(tiny_model_dir, tmp_path / "serve.log", **env) as server:
        wait_until(lambda: len(worker_thresholds(server.url)) == 2, 60, "two workers")
        made = list(tmp_path.glob("elf-state-*"))
        assert len(made) == 1, made
        r = httpx.put(
            f"{server.url}/v1/models/tiny/thresholds",
            json={"thresholds": NEW},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        wait_until(
            lambda: set(worker_thresholds(server.url).values()) == {NEW[0]}, 5, "propagation"
        )
        with ThreadPoolExecutor(4) as pool:  # new connections, spread over both workers
            results = list(pool.map(lambda p: classify(server.url, p), pngs))
        assert [res["exit"] for res in results] == [
            {"index": 0, "count": 3, "threshold": NEW[0]}
        ] * REQUESTS
        assert "share threshold changes through" in server.logs()
        assert server.terminate() == 0
    assert not made[0].exists()
