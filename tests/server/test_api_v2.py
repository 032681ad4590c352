"""KServe v2 / Open Inference Protocol: metadata, health, infer (FP32 and BYTES), errors."""

from __future__ import annotations

import base64
import json
import struct
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
    extensions = ["binary_tensor_data"]
    assert meta == {"name": "elf-serving", "version": meta["version"], "extensions": extensions}
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
        ({"inputs": []}, "body.inputs: List should have at least 1 item"),
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
            "binary_data_size 3136 goes past the 0 bytes",
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


def _binary_request(header: dict, tail: bytes, length: int | None = None) -> dict:
    head = json.dumps(header).encode()
    size = len(head) if length is None else length
    return {
        "content": head + tail,
        "headers": {"Inference-Header-Content-Length": str(size)},
    }


def test_binary_request_and_response_by_hand(client: TestClient, pixels: np.ndarray) -> None:
    x = normalise(pixels[:3])
    inp = {"name": "input", "shape": [3, 1, 28, 28], "datatype": "FP32",
           "parameters": {"binary_data_size": x.nbytes}}  # fmt: skip
    outputs = [{"name": "class_index", "parameters": {"binary_data": True}}, {"name": "label"}]
    r = client.post(
        "/v2/models/tiny/infer",
        **_binary_request({"inputs": [inp], "outputs": outputs}, x.astype("<f4").tobytes()),
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert "data" not in head["outputs"][0]
    class_index = np.frombuffer(r.content[n:], dtype="<i8").tolist()
    json_answer = client.post("/v2/models/tiny/infer", json=fp32_request(x)).json()
    by_name = {o["name"]: o["data"] for o in json_answer["outputs"]}
    assert class_index == by_name["class_index"] and head["outputs"][1]["data"] == by_name["label"]


def test_json_without_content_type(client: TestClient, pixels: np.ndarray) -> None:
    body = json.dumps(fp32_request(normalise(pixels[:1])))
    r = client.post("/v2/models/tiny/infer", content=body)  # no Content-Type at all
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("tail", "length", "size", "message"),
    [
        (b"", 10_000, 4, "is not a byte count within"),
        (b"\0" * 8, None, 4, "4 bytes after the JSON header belong to no input"),
        (b"\0" * 4, None, 8, "binary_data_size 8 goes past the 4 bytes"),
        (struct.pack("<I", 99) + b"abc", None, 7, "input[0]: element of 99 bytes runs past"),
        (b"\1\0", None, 2, "ends inside an element's 4-byte length"),
    ],
)
def test_malformed_binary_requests_are_400(
    client: TestClient, tail: bytes, length: int | None, size: int, message: str
) -> None:
    inp = {"name": "input", "shape": [1], "datatype": "BYTES",
           "parameters": {"binary_data_size": size}}  # fmt: skip
    r = client.post("/v2/models/tiny/infer", **_binary_request({"inputs": [inp]}, tail, length))
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_fp32_binary_of_the_wrong_size_is_400(client: TestClient) -> None:
    inp = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
           "parameters": {"binary_data_size": 16}}  # fmt: skip
    r = client.post("/v2/models/tiny/infer", **_binary_request({"inputs": [inp]}, b"\0" * 16))
    assert r.status_code == 400
    assert r.json()["error"] == "input: 16 bytes of FP32 data; shape [1, 1, 28, 28] needs 3136"
