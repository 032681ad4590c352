"""Drift, seen by the audit: a real elf-serve (bundled model, ELF_AUDIT_RATE=1) and a real
Prometheus with the project's rules.

First real Fashion-MNIST test images: the audited agreement of exit 0 with the final exit stays
near the value measured on the validation split (models/.../agreement.json) and the alert stays
quiet. Then the same kind of images inverted (255 - x), which the model never saw: agreement
falls far below, and ElfAuditAgreementLow fires. The rules are the project's, with the group
intervals at 1 s and the alert's `for:` at 1 s instead of 15 m, to keep the test short.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import procs
from tests.deploy.queries import REPO
from tests.deploy.test_prometheus_live import PromAPI, adapted_config
from tests.server.live import free_port
from tests.server.tiny_model import png_bytes
from training.data.idx import find_idx_file, read_idx

MODEL_DIR = REPO / "models" / "fashion-mnist-lt"
FASHION = Path("/usr/share/datasets/fashion-mnist")
ALERT = "ElfAuditAgreementLow"
IN_DIST, DRIFTED, PER_REQUEST = 200, 400, 8


def fast_rules(directory: Path) -> None:
    rules: dict[str, Any] = yaml.safe_load((directory / "rules.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = "1s"
    (directory / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))


def send(client: httpx.Client, url: str, images: np.ndarray, early: int) -> int:
    """Classify `images`; the running count of answers that left at an early exit (each one is
    audited or dropped). After every request, wait until its early answers were audited: the
    audit runs on spare capacity only, and on a loaded machine a client that never waits would
    fill its queue (ELF_MAX_BATCH_SIZE 8 -> 32 rows) and see "full" drops."""
    for start in range(0, len(images), PER_REQUEST):
        batch = images[start : start + PER_REQUEST]
        files = [("files", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(batch)]
        r = client.post(f"{url}/v1/classify", files=files)
        assert r.status_code == 200, r.text
        early += sum(a["exit"]["index"] < a["exit"]["count"] - 1 for a in r.json()["results"])
        settled_counts(client, url, early)
    return early


def totals(client: httpx.Client, url: str) -> dict[tuple[str, str], float]:
    """(metric, exit or reason) -> value for the audit counters on the server's /metrics."""
    text = client.get(f"{url}/metrics").text
    return {
        (s.name, s.labels.get("exit", s.labels.get("reason", ""))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("elf_audit_") and s.name.endswith("_total")
    }


def settled_counts(client: httpx.Client, url: str, early: int) -> tuple[float, float]:
    """(audited, agreeing) at exit 0 once every early answer so far was audited or dropped."""
    deadline = time.monotonic() + 30
    while True:
        t = totals(client, url)
        done = sum(v for (name, _), v in t.items() if name != "elf_audit_agree_total")
        if done == early:
            break
        assert time.monotonic() < deadline, (t, early)
        time.sleep(0.05)
    assert t[("elf_audit_dropped_total", "stale")] + t[("elf_audit_dropped_total", "full")] == 0
    return t[("elf_audit_images_total", "0")], t[("elf_audit_agree_total", "0")]


def alert_states(prom: PromAPI) -> set[str]:
    alerts = httpx.get(f"{prom.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["state"] for a in alerts if a["labels"]["alertname"] == ALERT}


@pytest.mark.integration
def test_inverted_images_lower_agreement_and_fire_the_alert(tmp_path: Path) -> None:
    expected = yaml.safe_load((MODEL_DIR / "agreement.json").read_text())["exits"][0]
    images = read_idx(find_idx_file(FASHION, "t10k-images-idx3-ubyte"), 3)  # uint8 [N, 28, 28]
    server_port, prom_port = free_port(), free_port()
    while prom_port == server_port:
        prom_port = free_port()
    url = f"http://127.0.0.1:{server_port}"
    config = adapted_config(tmp_path, f"127.0.0.1:{server_port}", prom_port)
    fast_rules(tmp_path)
    with (
        procs.serve(MODEL_DIR, server_port, tmp_path / "elf-serve.log"),
        procs.prometheus(config, tmp_path / "tsdb", prom_port, tmp_path / "prometheus.log"),
        httpx.Client(timeout=30) as client,
    ):
        prom = PromAPI(f"http://127.0.0.1:{prom_port}")
        prom.wait_for('sum(up{job="elf-server"})', 1)
        early = send(client, url, images[:IN_DIST], 0)
        n_in, agree_in = settled_counts(client, url, early)
        assert n_in >= 50  # the bundled model answers about half of these at exit 0
        in_dist = agree_in / n_in
        assert in_dist >= expected["agreement"] - 0.05, (in_dist, expected)
        # Prometheus has seen exactly these counts: the rule had its chance, and stayed quiet.
        prom.wait_for('sum(elf_audit_images_total{exit="0"})', n_in)
        prom.wait_for('count(model_exit:elf_audit_agreement:ratio_rate15m{exit="0"} > 0)', 1)
        assert alert_states(prom) == set()

        early = send(client, url, 255 - images[IN_DIST : IN_DIST + DRIFTED], early)
        n_all, agree_all = settled_counts(client, url, early)
        drifted = (agree_all - agree_in) / (n_all - n_in)
        assert n_all - n_in >= 50
        assert drifted < in_dist - 0.2, (drifted, in_dist)
        deadline_s = 60.0
        prom.wait_for('sum(elf_audit_images_total{exit="0"})', n_all, timeout=deadline_s)
        prom.wait_for(f'count(ALERTS{{alertname="{ALERT}",alertstate="firing",exit="0"}})', 1)
        assert "firing" in alert_states(prom)
