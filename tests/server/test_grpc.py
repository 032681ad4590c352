"""The Open Inference Protocol over gRPC against a real elf-serve, with the standard clients
unchanged: tritonclient.grpc (raw_input_contents), KServe's InferenceGRPCClient (typed contents
and raw, in its own process) and the protocol's stub with typed contents. Every answer equals
v1's for the same images; errors carry HTTP's messages; metrics count both protocols; SIGTERM
lets a call in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.server.live import (
    GATED_SERVE,
    REPO,
    LiveServer,
    ServerEvents,
    elf_serve,
    free_port,
    live_command,
)
from tests.server.test_kserve_client import OUTPUTS, _v1
from tests.server.tiny_model import normalise

pytestmark = pytest.mark.integration

N = 6
BUNDLED = REPO / "models" / "fashion-mnist-lt"


def _client(server: LiveServer) -> tgrpc.InferenceServerClient:
    assert server.grpc_target is not None
    return tgrpc.InferenceServerClient(server.grpc_target)


def _fp32(pixels: np.ndarray) -> tgrpc.InferInput:
    x = normalise(pixels)
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _images(pngs: list[bytes]) -> tgrpc.InferInput:
    inp = tgrpc.InferInput("input", [len(pngs)], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=np.object_))
    return inp


def _as_lists(get: dict[str, np.ndarray]) -> dict[str, list]:
    out = {name: value.tolist() for name, value in get.items()}
    out["label"] = [b.decode() for b in get["label"]]
    return out


def assert_equal_v1(got: dict[str, list], want: dict[str, list], n: int = N) -> None:
    assert got["label"] == want["label"]
    for name in ("class_index", "exit_index", "flops_executed"):
        assert got[name] == want[name], name
    np.testing.assert_allclose(got["confidence"], want["confidence"], rtol=1e-5)
    assert np.shape(got["probabilities"]) == (n, 10)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-7)


def _metrics(server: LiveServer) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


@pytest.mark.parametrize("kind", ["FP32", "BYTES"])
def test_tritonclient_grpc_answers_equal_v1(
    served: LiveServer, pixels: np.ndarray, pngs: list[bytes], kind: str
) -> None:
    client, want = _client(served), _v1(served, pngs[:N])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "0.0.1-test")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "elf-serving" and meta["extensions"] == ["binary_tensor_data"]
    model = client.get_model_metadata("tiny", as_json=True)
    http_meta = httpx.get(f"{served.url}/v2/models/tiny").json()
    assert model["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    ]
    assert [o["name"] for o in model["outputs"]] == [o["name"] for o in http_meta["outputs"]]
    assert model["versions"] == http_meta["versions"] == ["0.0.1-test"]
    inp = _fp32(pixels[:N]) if kind == "FP32" else _images(pngs[:N])
    result = client.infer("tiny", [inp], request_id="g-1")
    assert result.get_response().id == "g-1" and result.get_response().model_version == "0.0.1-test"
    assert_equal_v1(_as_lists({o: result.as_numpy(o) for o in OUTPUTS}), want)
    params = result.get_response().parameters
    assert params["exit_indices"].string_param == ",".join(map(str, want["exit_index"]))
    assert params["flops_executed"].int64_param == sum(want["flops_executed"])
    # Outputs named, and a request parameter: threshold 0, every image leaves at exit 0 (as v1).
    outputs = [tgrpc.InferRequestedOutput("exit_index"), tgrpc.InferRequestedOutput("label")]
    result = client.infer("tiny", [inp], outputs=outputs, parameters={"threshold": 0.0})
    assert [o.name for o in result.get_response().outputs] == ["exit_index", "label"]
    want0 = _v1(served, pngs[:N], threshold=0.0)
    assert result.as_numpy("exit_index").tolist() == [0] * N == want0["exit_index"]
    assert [b.decode() for b in result.as_numpy("label")] == want0["label"]


def _typed_request(pixels: np.ndarray, pngs: list[bytes], kind: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny", id="typed")
    if kind == "FP32":
        x = normalise(pixels)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        tensor = request.inputs.add(name="input", datatype="BYTES", shape=[len(pngs)])
        tensor.contents.bytes_contents.extend(pngs)
    request.parameters["exit"].string_param = "final"
    return request


def _decode(response: pb.ModelInferResponse) -> dict[str, list]:
    """raw_output_contents -> lists, as the protocol lays them out."""
    out: dict[str, list] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            items, i = [], 0
            while i < len(raw):
                size = int.from_bytes(raw[i : i + 4], "little")
                items.append(raw[i + 4 : i + 4 + size].decode())
                i += 4 + size
            out[tensor.name] = items
        else:
            dtype = {"FP32": "<f4", "INT64": "<i8"}[tensor.datatype]
            out[tensor.name] = np.frombuffer(raw, dtype).reshape(tensor.shape).tolist()
    return out


@pytest.mark.parametrize("kind", ["FP32", "BYTES"])
def test_typed_contents_answer_equal_v1(
    served: LiveServer, pixels: np.ndarray, pngs: list[bytes], kind: str
) -> None:
    """The protocol's own stub (no client library in between): typed contents in, raw out."""
    assert served.grpc_target is not None
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(_typed_request(pixels[:N], pngs[:N], kind))
    assert response.id == "typed" and response.model_name == "tiny"
    assert_equal_v1(_decode(response), _v1(served, pngs[:N], exit="final"))  # type: ignore[arg-type]


def test_kserve_grpc_client_answers_equal_v1(
    served: LiveServer, pixels: np.ndarray, pngs: list[bytes], tmp_path: Path
) -> None:
    np.save(tmp_path / "pixels.npy", pixels[:N])
    for i, png in enumerate(pngs[:N]):
        (tmp_path / f"{i}.png").write_bytes(png)
    script = "tests.server.kserve_grpc_client"
    args = [served.grpc_target or "", "tiny", str(tmp_path / "pixels.npy"), str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["live"] and report["ready"] and report["model_ready"]
    want = _v1(served, pngs[:N])
    for key in ("FP32-typed", "FP32-raw", "BYTES-typed", "BYTES-raw"):
        assert report[key]["id"] == "k-1"
        assert_equal_v1(report[key]["outputs"], want)
    assert report["unknown_model"][0] == "NOT_FOUND"
    assert report["unknown_model"][1].startswith("unknown model 'nope'")


def _http_error(server: LiveServer, body: dict, model: str = "tiny") -> str:
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body)
    assert r.status_code in (400, 404), r.text
    error: str = r.json()["error"]
    return error


def test_errors_carry_https_messages_and_metrics_count_both_protocols(
    served: LiveServer, pixels: np.ndarray
) -> None:
    client = _client(served)
    before = _metrics(served)
    x = normalise(pixels[:1])[..., :27].copy()
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    http_body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32"}]}
    http_body["inputs"][0]["data"] = x.ravel().tolist()
    with pytest.raises(InferenceServerException) as bad_shape:
        client.infer("tiny", [inp])
    assert bad_shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad_shape.value.message() == _http_error(served, http_body)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [inp])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert unknown.value.message() == _http_error(served, http_body, "nope")
    with pytest.raises(InferenceServerException) as nan:
        client.infer("tiny", [_fp32(pixels[:1])], parameters={"threshold": float("nan")})
    assert nan.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "parameters.threshold: Input should be a finite number" in nan.value.message()
    with pytest.raises(InferenceServerException) as version:
        client.get_model_metadata("tiny", "9")
    assert version.value.status() == "StatusCode.NOT_FOUND" and "version" in version.value.message()
    assert served.grpc_target is not None
    with grpc.insecure_channel(served.grpc_target) as channel:  # two raw tensors for one input
        request = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[b"", b""])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
        with pytest.raises(grpc.RpcError) as raw:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents holds 2 tensors for 1 inputs" in raw.value.details()
    client.infer("tiny", [_fp32(pixels[:2])])
    after = _metrics(served)

    def delta(name: str, **labels: str) -> float:
        return _count(after, name, **labels) - _count(before, name, **labels)

    route = "/inference.GRPCInferenceService/ModelInfer"
    assert delta("elf_requests_total", protocol="grpc", route=route, status="OK") == 1
    assert delta("elf_requests_total", protocol="grpc", route=route, status="INVALID_ARGUMENT") == 3
    assert delta("elf_requests_total", protocol="grpc", route=route, status="NOT_FOUND") == 1
    assert delta("elf_request_duration_seconds_count", protocol="grpc", route=route) == 5
    assert delta("elf_requests_total", protocol="http", status="400") == 1
    assert delta("elf_rejected_total", reason="bad_tensor") == 3  # 2 gRPC + 1 HTTP
    assert delta("elf_rejected_total", reason="unknown_model") == 3  # 2 gRPC (one metadata) + 1
    assert delta("elf_images_total", model="tiny") == 2  # the gRPC answer's images, counted once


def test_bundled_model_over_grpc_equals_v1(pngs: list[bytes], tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with live_command(
        [sys.executable, "-m", "server.cli"], BUNDLED, log, ELF_WARMUP_ALL_BATCH_SIZES="false"
    ) as server:
        name = BUNDLED.name
        result = _client(server).infer(name, [_images(pngs[:N])])
        r = httpx.post(
            f"{server.url}/v1/classify",
            files=[("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs[:N])],
        )
        want = r.json()["results"]
        assert [b.decode() for b in result.as_numpy("label")] == [w["label"] for w in want]
        assert result.as_numpy("exit_index").tolist() == [w["exit"]["index"] for w in want]
        conf = [w["confidence"] for w in want]
        np.testing.assert_allclose(result.as_numpy("confidence"), conf, rtol=1e-5)


def test_sigterm_lets_a_grpc_call_in_flight_finish(
    tiny_model_dir: Path, pixels: np.ndarray, tmp_path: Path
) -> None:
    events = ServerEvents(tmp_path)
    log = tmp_path / "serve.log"
    with (
        live_command(GATED_SERVE, tiny_model_dir, log, **events.env) as server,
        contextlib.closing(events),
    ):
        target = server.grpc_target
        assert target is not None

        async def drain() -> tuple[object, Exception]:
            await asyncio.to_thread(events.hold)
            async with tgrpc_aio.InferenceServerClient(target) as client:
                held = asyncio.ensure_future(client.infer("tiny", [_fp32(pixels[:1])]))
                await asyncio.to_thread(events.expect, "admitted 1", "run 0 1")
                server.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(events.expect, f"signal {int(signal.SIGTERM)}", "draining")
                late = await _refused_after_stop(target, pixels)
                await asyncio.to_thread(events.release)
                return await held, late

        answered, late = asyncio.run(drain())
        assert answered.as_numpy("exit_index").shape == (1,)  # type: ignore[attr-defined]
        assert isinstance(late, InferenceServerException)
        assert late.status() == "StatusCode.UNAVAILABLE", late
        assert server.proc.wait(20) == 0, server.logs()
        assert "batchers stopped" in server.logs()


async def _refused_after_stop(target: str, pixels: np.ndarray) -> Exception:
    """Poll with fresh channels until the server refuses new calls (bounded by a deadline);
    ServerLive, as an infer would wait at the closed gate; then an infer, refused too."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        async with tgrpc_aio.InferenceServerClient(target) as client:
            try:
                await client.is_server_live(client_timeout=2)
            except InferenceServerException:
                try:
                    await client.infer("tiny", [_fp32(pixels[:1])], client_timeout=5)
                except InferenceServerException as exc:
                    return exc
                raise AssertionError("an infer was answered after the server refused") from None
        await asyncio.sleep(0.05)
    raise AssertionError("the gRPC server still accepted calls 20 s after SIGTERM")


def test_grpc_port_in_use_is_one_line_before_the_models_load() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
        cmd = [elf_serve(), "--port", str(free_port()), "--grpc-port", str(port)]
        proc = subprocess.run(
            cmd, env=environ, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"elf-serve: error: cannot listen for gRPC on 127.0.0.1:{port} (Address already in use); "
        "choose another port with --grpc-port (ELF_GRPC_PORT), or 0 to turn gRPC off"
    ]
