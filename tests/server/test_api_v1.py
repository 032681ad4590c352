"""v1 over FastAPI's TestClient: answers equal the offline stage-by-stage results."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from elf_core.exits import early_exit
from elf_core.manifest import load_manifest
from server.app import create_app
from server.schemas.v1 import ClassifyResponse
from tests.server.conftest import files, make_settings
from tests.server.tiny_model import build_tiny_model, normalise, stage_probs


def test_single_multipart_file_and_raw_body_give_the_offline_answer(
    client: TestClient, pngs: list[bytes], offline_probs: list[np.ndarray], tiny_model_dir: Path
) -> None:
    manifest = load_manifest(tiny_model_dir)
    pred, exits = early_exit(offline_probs, manifest.thresholds)
    for i in range(6):
        r1 = client.post("/v1/classify", files={"file": ("x.png", pngs[i], "image/png")})
        r2 = client.post(
            "/v1/models/tiny/classify", content=pngs[i], headers={"Content-Type": "image/png"}
        )
        for r in (r1, r2):
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "tiny" and body["version"] == manifest.version
            (res,) = body["results"]
            assert res["class_index"] == pred[i]
            assert res["label"] == manifest.class_names[pred[i]]
            assert res["exit"] == {
                "index": int(exits[i]),
                "count": 3,
                "threshold": manifest.thresholds[exits[i]],
            }
            p = offline_probs[exits[i]][i]
            assert res["confidence"] == pytest.approx(p.max(), abs=1e-5)
            executed = manifest.exits[exits[i]].cumulative_flops
            assert res["flops"] == {
                "executed": executed,
                "full": manifest.flops_full,
                "saved_ratio": pytest.approx(1 - executed / manifest.flops_full),
            }
            t = res["timings"]
            assert 0 <= t["queue_ms"] <= t["total_ms"] and 0 < t["compute_ms"] <= t["total_ms"]
        assert r1.json()["results"][0]["name"] == "file (x.png)"
        assert r2.json()["results"][0]["name"] == "body"


def test_many_files_keep_their_order_and_use_every_exit(
    client: TestClient, pngs: list[bytes], offline_probs: list[np.ndarray], tiny_model_dir: Path
) -> None:
    pred, exits = early_exit(offline_probs, load_manifest(tiny_model_dir).thresholds)
    r = client.post("/v1/classify?top_k=3", files=files(pngs[:20]))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == list(range(20))
    assert [x["name"] for x in results] == [f"files[{i}] (img{i}.png)" for i in range(20)]
    assert [x["class_index"] for x in results] == pred[:20].tolist()
    assert [x["exit"]["index"] for x in results] == exits[:20].tolist()
    assert set(exits[:20].tolist()) == {0, 1, 2}
    for x in results:
        confs = [t["confidence"] for t in x["top_k"]]
        assert len(confs) == 3 and confs == sorted(confs, reverse=True)
        assert x["top_k"][0]["class_index"] == x["class_index"]


def test_classify_json_is_the_response_models_own_serialisation(
    client: TestClient, pngs: list[bytes]
) -> None:
    """The hot path writes the answer from dicts with orjson; the bytes must be exactly what
    pydantic-core writes for the documented ClassifyResponse (same keys, order, numbers)."""
    for query in ("", "?top_k=10", "?exit=final"):
        r = client.post("/v1/classify" + query, files=files(pngs[:7]))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        model = ClassifyResponse.model_validate_json(r.content, strict=True)
        assert model.model_dump_json().encode() == r.content
        assert len(model.results) == 7 and len(model.results[0].top_k) == (
            10 if "top_k" in query else 5
        )


def test_threshold_and_exit_final_apply_per_request(client: TestClient, pngs: list[bytes]) -> None:
    r0 = client.post("/v1/classify?threshold=0", files=files(pngs[:8]))
    assert [x["exit"]["index"] for x in r0.json()["results"]] == [0] * 8
    r1 = client.post("/v1/classify?threshold=1&exit=auto", files=files(pngs[:8]))
    rf = client.post("/v1/classify?exit=final", files=files(pngs[:8]))
    for r in (r1, rf):
        res = r.json()["results"]
        # Softmax reaches exactly 1.0 only when saturated; the fixture's first exits never are.
        assert [x["exit"]["index"] for x in res] == [2] * 8
    # Passing every exit pays every head, honestly; exit=final runs full.onnx, the backbone alone.
    assert all(x["flops"]["saved_ratio"] < 0 for x in r1.json()["results"])
    assert all(x["flops"]["saved_ratio"] == 0 for x in rf.json()["results"])


@pytest.mark.parametrize(
    "query",
    ["threshold=1.5", "threshold=-0.1", "threshold=abc", "threshold=nan", "top_k=0", "exit=x"],
)
def test_bad_query_values_are_422(client: TestClient, pngs: list[bytes], query: str) -> None:
    r = client.post(f"/v1/classify?{query}", content=pngs[0], headers={"Content-Type": "image/png"})
    assert r.status_code == 422
    assert list(r.json()) == ["error"]
    assert query.split("=", maxsplit=1)[0] in r.json()["error"] or "exit" in r.json()["error"]


def test_models_list_and_detail(client: TestClient, tiny_model_dir: Path) -> None:
    manifest = load_manifest(tiny_model_dir)
    listing = client.get("/v1/models").json()
    assert listing["default"] == "tiny"
    assert [m["name"] for m in listing["models"]] == ["tiny"]
    d = client.get("/v1/models/tiny").json()
    assert d["providers"] == ["CPUExecutionProvider"] and d["device"] == "cpu"
    assert d["thresholds"] == manifest.thresholds
    assert [e["cumulative_flops"] for e in d["exits"]] == [
        e.cumulative_flops for e in manifest.exits
    ]
    assert d["exits"][2]["flops_ratio"] == pytest.approx(
        manifest.exits[2].cumulative_flops / manifest.flops_full
    )
    assert d["calibration_curve"]["curve"][0]["thresholds"] == manifest.thresholds
    assert d["calibration"]["tolerance"] == 0.005
    assert d["class_names"] == manifest.class_names
    assert d["preprocessing"]["mean"] == [0.5]
    assert d["batching"]["max_batch_size"] == 8 and d["batching"]["batch_cap"] == 8
    assert d["batch_cap"] == {"size": 8, "rule": "max", "tolerance": None, "ms_per_image": {}}
    assert client.get("/v1/models/nope").status_code == 404


def test_a_models_root_serves_several_models(
    tmp_path: Path, pngs: list[bytes], pixels: np.ndarray
) -> None:
    dirs = {
        n: build_tiny_model(tmp_path / d, name=n, seed=s)
        for n, d, s in [("alpha", "a", 1), ("beta", "b", 2)]
    }
    (tmp_path / "not-a-model").mkdir()
    with TestClient(create_app(make_settings(tmp_path, default_model="beta"))) as c:
        listing = c.get("/v1/models").json()
        assert listing["default"] == "beta"
        assert sorted(m["name"] for m in listing["models"]) == ["alpha", "beta"]
        for route, name in [("/v1/classify", "beta"), ("/v1/models/alpha/classify", "alpha")]:
            probs = stage_probs(dirs[name], normalise(pixels[:8]))
            pred, exits = early_exit(probs, load_manifest(dirs[name]).thresholds)
            res = c.post(route, files=files(pngs[:8])).json()["results"]
            assert [x["class_index"] for x in res] == pred.tolist()
            assert [x["exit"]["index"] for x in res] == exits.tolist()


def test_inference_runs_on_the_batcher_thread_not_the_event_loop(
    client: TestClient, pngs: list[bytes]
) -> None:
    model = client.app.state.elf.models.get("tiny")  # type: ignore[attr-defined]
    seen: list[str] = []
    run = model.runner.run

    def spy(k: int, x: object) -> object:
        seen.append(threading.current_thread().name)
        return run(k, x)

    model.runner.run = spy
    try:
        assert client.post("/v1/classify", files=files(pngs[:4])).status_code == 200
    finally:
        model.runner.run = run
    assert seen and set(seen) == {"batcher-tiny"}
