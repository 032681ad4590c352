"""The online audit: early answers finished at full depth on spare capacity, counted per exit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from elf_core.agreement import exit_agreement
from server.app import create_app
from server.batching.audit import Auditor
from server.batching.batcher import Batcher
from server.metrics import Metrics
from tests.server.conftest import files, make_settings
from tests.server.fake_stages import FakeStages, row_inputs

THR = np.array([0.8, 0.8, 0.0])


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, {"model": "model", **labels})
    return float(got) if got is not None else 0.0


def wait_for(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_audit_runs_after_the_requests_and_counts_agreement() -> None:
    confs = [[0.9, 0.5, 0.6], [0.3, 0.95, 0.6], [0.3, 0.4, 0.7], [0.99, 0.99, 0.99]]
    labels = [[1, 2, 3], [0, 2, 1], [1, 1, 3], [3, 0, 3]]  # rows 0, 1 disagree; row 3 agrees
    stages, metrics = FakeStages(confs, labels), Metrics()
    audit = Auditor(1.0, 3, max_batch_size=4, metrics=metrics)
    b = Batcher(
        stages,
        max_batch_size=4,
        max_queue_delay_s=0.001,
        max_queue_size=64,
        metrics=metrics,
        audit=audit,
    )
    b.start()
    try:
        res = asyncio.run(b.infer(row_inputs(range(4)), [THR] * 4, 5))
        assert [r.exit_index for r in res] == [0, 1, 2, 0]
        wait_for(lambda: value(metrics, "elf_audit_images_total", exit="0") == 2)
        wait_for(lambda: value(metrics, "elf_audit_images_total", exit="1") == 1)
    finally:
        b.stop(5)
    # Request work first (stages 0, 1, 2), then the audit, deepest stage first.
    assert stages.batches == [
        (0, [0, 1, 2, 3]),
        (1, [1, 2]),
        (2, [2]),
        (2, [1]),
        (1, [0, 3]),
        (2, [0, 3]),
    ]
    assert value(metrics, "elf_audit_agree_total", exit="0") == 1
    assert value(metrics, "elf_audit_agree_total", exit="1") == 0
    assert audit.pending == 0


def test_audit_rows_are_dropped_first_and_counted() -> None:
    metrics = Metrics()
    audit = Auditor(1.0, 3, max_batch_size=4, max_rows=2, max_age_s=1.0, metrics=metrics)
    feats, preds = np.arange(4), np.zeros(4, dtype=np.int64)
    audit.select(0, feats, np.array([0, 1]), preds, now=10.0)
    audit.select(0, feats, np.array([2]), preds, now=10.0)  # over max_rows
    assert value(metrics, "elf_audit_dropped_total", reason="full") == 1
    assert audit.pending == 2 and audit.ready_stage(10.5) == 1
    assert audit.ready_stage(11.5) is None  # older than max_age_s
    assert value(metrics, "elf_audit_dropped_total", reason="stale") == 2
    audit.select(1, feats, np.array([3]), preds, now=12.0)
    audit.drop_all()
    assert value(metrics, "elf_audit_dropped_total", reason="shutdown") == 1
    assert audit.pending == 0


def test_served_audit_matches_the_offline_agreement(
    tiny_model_dir: Path, pngs: list[bytes], offline_probs: list[np.ndarray]
) -> None:
    settings = make_settings(tiny_model_dir, audit_rate=1.0)
    with TestClient(create_app(settings)) as c:
        thresholds = c.get("/v1/models/tiny").json()["thresholds"]
        want = exit_agreement(offline_probs, thresholds)
        get = c.app.state.elf.metrics.registry.get_sample_value  # type: ignore[attr-defined]

        def total(name: str, label: str, values: list[str]) -> int:
            return sum(int(get(name, {"model": "tiny", label: v}) or 0) for v in values)

        early = 0
        for start in range(0, len(pngs), 8):  # one batch at a time: the audit queue never fills
            r = c.post("/v1/classify", files=files(pngs[start : start + 8]))
            early += sum(a["exit"]["index"] < 2 for a in r.json()["results"])
            wait_for(lambda n=early: total("elf_audit_images_total", "exit", ["0", "1"]) == n)
        dropped = ["full", "stale", "shutdown", "error"]
        assert total("elf_audit_dropped_total", "reason", dropped) == 0
        for e in want:
            k = str(e.exit)
            assert total("elf_audit_images_total", "exit", [k]) == e.exited
            assert total("elf_audit_agree_total", "exit", [k]) == e.agree
    assert sum(e.exited for e in want) > 0
