"""KServe v2 / Open Inference Protocol: metadata, health, infer (FP32 and BYTES), errors."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from elf_core.exits import early_exit
from elf_core.manifest import load_manifest
from tests.server.tiny_model import normalise

OUTPUT_NAMES = [
    "label",
    "class_index",
    "confidence",
    "exit_index",
    "flops_executed",
    "probabilities",
]


def fp32_request(x: np.ndarray, nested: bool = False, **extra: object) -> dict:
    data = x.tolist() if nested else x.ravel().tolist()
    inp = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}
    return {"inputs": [inp], **extra}


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta == {"name": "elf-serving", "version": meta["version"], "extensions": []}
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert client.get("/v2/models/tiny/versions/0.0.1-test/ready").status_code == 200


def test_model_metadata(client: TestClient) -> None:
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["versions"] == ["0.0.1-test"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == OUTPUT_NAMES
    assert meta["outputs"][-1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
    assert client.get("/v2/models/tiny/versions/0.0.1-test").json() == meta
    r = client.get("/v2/models/tiny/versions/9")
    assert r.status_code == 404 and "version" in r.json()["error"]
    assert client.get("/v2/models/nope").status_code == 404


def test_infer_fp32_flat_and_nested_equal_offline(
    client: TestClient, pixels: np.ndarray, offline_probs: list[np.ndarray], tiny_model_dir: Path
) -> None:
    manifest = load_manifest(tiny_model_dir)
    pred, exits = early_exit(offline_probs, manifest.thresholds)
    x = normalise(pixels[:12])
    for nested in (False, True):
        r = client.post("/v2/models/tiny/infer", json=fp32_request(x, nested, id="req-7"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "tiny" and body["model_version"] == "0.0.1-test"
        assert body["id"] == "req-7"
        out = {o["name"]: o for o in body["outputs"]}
        assert list(out) == OUTPUT_NAMES
        assert out["class_index"] == {
            "name": "class_index",
            "shape": [12],
            "datatype": "INT64",
            "data": pred[:12].tolist(),
        }
        assert out["exit_index"]["data"] == exits[:12].tolist()
        assert out["label"]["datatype"] == "BYTES"
        assert out["label"]["data"] == [manifest.class_names[c] for c in pred[:12]]
        cum = [manifest.exits[e].cumulative_flops for e in exits[:12]]
        assert out["flops_executed"]["data"] == cum
        probs = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
        expected = np.stack([offline_probs[e][i] for i, e in enumerate(exits[:12])])
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        np.testing.assert_allclose(out["confidence"]["data"], expected.max(axis=1), atol=1e-5)
        p = body["parameters"]
        assert p["exit_count"] == 3 and p["flops_full"] == manifest.flops_full
        assert p["flops_executed"] == sum(cum)
        assert p["exit_indices"] == ",".join(map(str, exits[:12]))
        assert p["flops_saved_ratio"] == pytest.approx(1 - sum(cum) / (12 * manifest.flops_full))


def test_infer_bytes_of_base64_images_and_output_selection(
    client: TestClient, pngs: list[bytes], offline_probs: list[np.ndarray], tiny_model_dir: Path
) -> None:
    pred, exits = early_exit(offline_probs, load_manifest(tiny_model_dir).thresholds)
    data = [base64.b64encode(p).decode() for p in pngs[:5]]
    for shape, payload in (([5], data), ([5, 1], [[d] for d in data])):
        req = {
            "inputs": [{"name": "input", "shape": shape, "datatype": "BYTES", "data": payload}],
            "outputs": [{"name": "exit_index"}, {"name": "class_index"}],
        }
        r = client.post("/v2/models/tiny/versions/0.0.1-test/infer", json=req)
        assert r.status_code == 200, r.text
        outs = r.json()["outputs"]
        assert [o["name"] for o in outs] == ["exit_index", "class_index"]
        assert outs[0]["data"] == exits[:5].tolist() and outs[1]["data"] == pred[:5].tolist()
        assert len(r.json()["id"]) == 36  # generated uuid when the request has none


def test_infer_parameters_threshold_and_exit(client: TestClient, pixels: np.ndarray) -> None:
    x = normalise(pixels[:6])
    for params, want in (({"threshold": 0}, 0), ({"exit": "final"}, 2), ({"threshold": 1.0}, 2)):
        r = client.post("/v2/models/tiny/infer", json=fp32_request(x, parameters=params))
        exits = next(o for o in r.json()["outputs"] if o["name"] == "exit_index")["data"]
        assert exits == [want] * 6, params


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"inputs": []}, "exactly one input tensor"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]},
            "unknown input 'x'",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]},
            "input[0]: not valid base64",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]},
            "shape says 2 images",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [3]}]},
            "expected a base64 string",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]},
            "input[0]: not a recognised image",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "data": [0.0] * 784,
                    }
                ],
                "outputs": [{"name": "nope"}],
            },
            "unknown outputs ['nope']",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "data": [0.0] * 784,
                    }
                ],
                "parameters": {"threshold": 3},
            },
            "parameters.threshold",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "data": [0.0] * 784,
                    }
                ],
                "parameters": {"exit": "early"},
            },
            "parameters.exit",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 3136},
                    }
                ]
            },
            "binary tensor data",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "data": ["a"] * 784,
                    }
                ]
            },
            "needs numbers",
        ),
        ({"inputs": "nope"}, "inputs"),
        ({}, "inputs: Field required"),
    ],
)
def test_infer_errors_are_400_with_an_error_object(
    client: TestClient, request_body: dict, message: str
) -> None:
    r = client.post("/v2/models/tiny/infer", json=request_body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"], r.json()
