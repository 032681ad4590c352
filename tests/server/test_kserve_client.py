"""A standard Open Inference Protocol client (tritonclient, from PyPI) against a real elf-serve:
JSON and binary tensor data, FP32 tensors and BYTES images, answers equal to v1's."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server.live import LiveServer
from tests.server.tiny_model import normalise

pytestmark = pytest.mark.integration

N = 6
OUTPUTS = ["label", "class_index", "confidence", "exit_index", "flops_executed", "probabilities"]


def _client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def _v1(server: LiveServer, pngs: list[bytes], **query: float) -> dict[str, list]:
    files = [("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    r = httpx.post(f"{server.url}/v1/classify", files=files, params={"top_k": 10, **query})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    probs = [sorted(t["class_index"] for t in res["top_k"]) for res in results]
    assert probs == [list(range(10))] * len(results)
    return {
        "label": [res["label"] for res in results],
        "class_index": [res["class_index"] for res in results],
        "exit_index": [res["exit"]["index"] for res in results],
        "confidence": [res["confidence"] for res in results],
        "flops_executed": [res["flops"]["executed"] for res in results],
        "probabilities": [
            [c for _, c in sorted((t["class_index"], t["confidence"]) for t in res["top_k"])]
            for res in results
        ],
    }


def _input(kind: str, binary: bool, pixels: np.ndarray, pngs: list[bytes]) -> triton.InferInput:
    if kind == "FP32":
        x = normalise(pixels[:N])  # float32 [N, 1, 28, 28]
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        return inp
    # BYTES: image files; in JSON the protocol's strings are base64 (binary: raw bytes).
    items = pngs[:N] if binary else [base64.b64encode(p) for p in pngs[:N]]
    inp = triton.InferInput("input", [N], "BYTES")
    inp.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return inp


def _labels(result: triton.InferResult) -> list[str]:
    # object array: bytes from binary data, str from JSON data
    return [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("label")]


def _assert_equal_v1(result: triton.InferResult, want: dict[str, list]) -> None:
    assert _labels(result) == want["label"]
    for name in ("class_index", "exit_index", "flops_executed"):
        assert result.as_numpy(name).tolist() == want[name], name
    np.testing.assert_allclose(result.as_numpy("confidence"), want["confidence"], rtol=1e-5)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (N, 10)
    np.testing.assert_allclose(probs, want["probabilities"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["FP32", "BYTES"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_standard_client_answers_equal_v1(
    served: LiveServer, pixels: np.ndarray, pngs: list[bytes], kind: str, binary: bool
) -> None:
    client, want = _client(served), _v1(served, pngs[:N])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.get_model_metadata("tiny")["inputs"][0]["name"] == "input"
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    result = client.infer("tiny", [_input(kind, binary, pixels, pngs)], outputs=outputs)
    _assert_equal_v1(result, want)
    # No outputs named: the client asks for every output in binary form (binary_data_output).
    _assert_equal_v1(client.infer("tiny", [_input(kind, binary, pixels, pngs)]), want)


def test_binary_outputs_mixed_with_json_and_parameters(
    served: LiveServer, pixels: np.ndarray, pngs: list[bytes]
) -> None:
    client = _client(served)
    outputs = [
        triton.InferRequestedOutput("class_index", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("exit_index", binary_data=True),
    ]
    inp = _input("BYTES", True, pixels, pngs)
    result = client.infer("tiny", [inp], outputs=outputs, parameters={"threshold": 0.0})
    response = result.get_response()
    by_name = {o["name"]: o for o in response["outputs"]}
    assert "data" in by_name["label"] and "binary_data_size" not in by_name["label"].get(
        "parameters", {}
    )
    assert by_name["class_index"]["parameters"]["binary_data_size"] == 8 * N
    assert "data" not in by_name["class_index"]
    # threshold 0: every image leaves at the first exit, as v1 says with ?threshold=0.
    want = _v1(served, pngs[:N], threshold=0.0)
    assert result.as_numpy("exit_index").tolist() == [0] * N == want["exit_index"]
    assert result.as_numpy("class_index").tolist() == want["class_index"]
    assert _labels(result) == want["label"]


def test_client_sees_the_servers_errors(served: LiveServer, pixels: np.ndarray) -> None:
    client = _client(served)
    x = normalise(pixels[:1])
    inp = triton.InferInput("input", [1, 1, 28, 27], "FP32")
    inp.set_data_from_numpy(x[..., :27].copy(), binary_data=True)
    with pytest.raises(InferenceServerException, match=r"does not match \[N, 1, 28, 28\]"):
        client.infer("tiny", [inp])
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [inp])
    with pytest.raises(InferenceServerException, match="finite number"):
        client.infer("tiny", [inp], parameters={"threshold": float("nan")})
