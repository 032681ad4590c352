"""bench/engine_tail: per-request timelines from the batches a request rode in, and py-spy
samples per thread and leaf component (bench/pyspy_summary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.engine_tail import Variant, decompose, parse_variant, timelines
from bench.pyspy_summary import component_table, components


def test_variants_parse_policy_batch_and_delay() -> None:
    assert parse_variant("age-aware:8") == Variant("age-aware", 8, 2.0)
    assert parse_variant("deepest-first:32:0.5").name == "deepest-first b32 d0.5"
    assert parse_variant("age-aware:auto") == Variant("age-aware", "auto", 2.0)
    with pytest.raises(ValueError, match="invalid literal"):
        parse_variant("age-aware:big")


def test_a_request_timeline_splits_waits_computes_and_the_answer() -> None:
    # Two requests of one client, then one of another; times in seconds.
    reqs = [
        {"client": 0, "t0": 0.0, "t1": 0.50, "exit": 1, "id": 11, "seq": 0},
        {"client": 0, "t0": 0.50, "t1": 0.90, "exit": 0, "id": 12, "seq": 1},
        {"client": 1, "t0": 0.05, "t1": 0.30, "exit": 0, "id": 13, "seq": 2},
    ]
    events = [
        (0, 0.10, 0.25, [11, 13]),  # stage 0 for requests 11 and 13
        (1, 0.30, 0.45, [11]),  # request 11 continues to stage 1
        (0, 0.70, 0.85, [12]),
    ]
    rows = timelines(reqs, events, stages=2)
    first, other, second = rows  # in submission order
    assert first["wait"] == pytest.approx([100.0, 50.0])  # 0.25 -> 0.30 between stages
    assert first["compute"] == pytest.approx([150.0, 150.0])
    assert first["answer"] == pytest.approx(50.0) and first["batch"] == [2, 1]
    assert first["prev_exit"] == -1 and second["prev_exit"] == 1  # the client's last exit
    assert second["wait"] == pytest.approx([200.0, 0.0]) and second["batch"] == [1, 0]
    assert other["latency"] == pytest.approx(250.0) and other["answer"] == pytest.approx(50.0)


def test_decompose_sets_the_p99_request_against_the_p50_one() -> None:
    rows = [
        {"latency": float(v), "exit": v % 2, "wait": [v - 10.0, 0.0], "compute": [10.0, 0.0],
         "answer": 0.0, "batch": [4, 0], "prev_exit": (v + 1) % 2}
        for v in range(100, 200)
    ]  # fmt: skip
    d = decompose(rows)
    assert d["p50_request"]["latency"] == 150.0 and d["p99_request"]["latency"] == 198.0
    assert d["slowest_2pct"]["n"] == 2 and d["slowest_2pct"]["latency"] == 198.5
    assert d["by_prev_exit"]["1->0"] == {"n": 50, "median_ms": 149.0}


def test_pyspy_components_charge_each_thread_by_its_leaf_frame(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    raw.write_text(
        "thread (1): MainThread;Runner.run (asyncio/runners.py:118) 30\n"
        "thread (1): MainThread;a (x.py:1);ImageFile.load (PIL/ImageFile.py:405) 10\n"
        "thread (2): batcher-m;Batcher._loop (server/batching/batcher.py:1);"
        "Session.run (onnxruntime/capi/x.py:9) 40\n",
        encoding="utf-8",
    )
    got = components(raw)
    assert got["MainThread"]["image decode (Pillow)"] == 10
    assert got["batcher-m"]["ONNX Runtime (stage graphs, merges)"] == 40
    # 40 samples at 100 Hz over 1 s = 0.4 s of a core; 100 requests: 4 ms each.
    table = component_table(raw, rate=100.0, seconds=1.0, req_per_s=100.0)
    assert "| MainThread | **all (busy 40% of a core)** | 100% | **4.000** |" in table
    assert "| MainThread | image decode (Pillow) | 25.0% | 1.000 |" in table
