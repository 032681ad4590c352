"""The model repository of a real elf-serve, driven by tritonclient's HTTP and gRPC clients
unchanged (get_model_repository_index, load_model, unload_model): a new version loads next to the
old and replaces it, a broken directory is refused with one message (400 / INVALID_ARGUMENT)
while the old version serves on, unload and load again, the admin token, poll mode, several
versions served at once with the version in the route and in the metrics."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.server.conftest import ADMIN_TOKEN
from tests.server.live import LiveServer, live_server
from tests.server.tiny_model import (
    build_tiny_model,
    fixture_pixels,
    normalise,
    png_bytes,
    stage_probs,
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SERVE_ENV = {
    "ELF_ADMIN_TOKEN": ADMIN_TOKEN,
    "ELF_MAX_BATCH_SIZE": "8",
    "ELF_INTRA_OP_THREADS": "1",
    "ELF_WARMUP_ALL_BATCH_SIZES": "false",
}
X = normalise(fixture_pixels(1))  # one image, float32 [1, 1, 28, 28]
PNG = ("x.png", png_bytes(fixture_pixels(1)[0]), "image/png")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1..6 of `tiny` (different weights: each answers differently), built once."""
    d = tmp_path_factory.mktemp("versions")
    for v in range(1, 7):
        build_tiny_model(d / str(v), name="tiny", seed=v, version=str(v))
    return d


def final_probs(model_dir: Path) -> np.ndarray:
    """The final exit's probabilities of X by plain ONNX Runtime: [C]."""
    return stage_probs(model_dir, X)[-1][0]


def add_version(versions: Path, root: Path, v: int) -> Path:
    """Copy aside, then rename into the repository (what the docs tell users to do)."""
    staged = root / f".incoming-{v}"
    shutil.copytree(versions / str(v), staged)
    target = root / "tiny" / str(v)
    target.parent.mkdir(exist_ok=True)
    staged.rename(target)
    return target


def infer(server: LiveServer, name: str = "tiny", version: str | None = None) -> httpx.Response:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                    "data": X.ravel().tolist()}],
        "parameters": {"exit": "final"},
    }  # fmt: skip
    return httpx.post(server.url + path, json=body, timeout=30)


def answered_probs(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array(next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"])


def states(index: list[dict]) -> dict[tuple[str, str], str]:
    return {(e["name"], e["version"]): e["state"] for e in index}


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def test_load_unload_and_refusal_over_http_and_grpc(versions: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    add_version(versions, root, 1)
    build_tiny_model(root / "other", name="other", seed=9)  # a flat model directory
    with live_server(root, tmp_path / "serve.log", **SERVE_ENV) as server:
        assert server.grpc_target is not None
        http = thttp.InferenceServerClient(server.url[len("http://") :])
        rpc = tgrpc.InferenceServerClient(server.grpc_target)
        # The admin token guards every call, over both protocols.
        with pytest.raises(InferenceServerException, match="missing Authorization"):
            http.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="wrong admin token") as refused:
            rpc.load_model("tiny", headers={"authorization": "Bearer nope"})
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        index = http.get_model_repository_index(headers=AUTH)
        assert states(index) == {("other", "0.0.1-test"): "READY", ("tiny", "1"): "READY"}
        np.testing.assert_allclose(answered_probs(infer(server)), final_probs(root / "tiny/1"))

        # Version 2 appears; load swaps to it and unloads version 1.
        add_version(versions, root, 2)
        assert states(http.get_model_repository_index(headers=AUTH))[("tiny", "2")] == "UNAVAILABLE"
        http.load_model("tiny", headers=AUTH)
        assert states(http.get_model_repository_index(headers=AUTH)) == {
            ("other", "0.0.1-test"): "READY",
            ("tiny", "1"): "UNAVAILABLE",
            ("tiny", "2"): "READY",
        }
        r = infer(server)
        assert r.json()["model_version"] == "2"
        np.testing.assert_allclose(answered_probs(r), final_probs(root / "tiny/2"), rtol=1e-5)
        assert infer(server, version="1").status_code == 404
        assert httpx.get(f"{server.url}/v2/models/tiny").json()["versions"] == ["2"]

        # A broken version 3 (a stage file that does not match its sha256) is refused with one
        # message, the same over both protocols; version 2 serves on.
        bad = add_version(versions, root, 3)
        (bad / "stage_1.onnx").write_bytes((bad / "stage_1.onnx").read_bytes()[:-8])
        r = httpx.post(f"{server.url}/v2/repository/models/tiny/load", headers=AUTH)
        message = r.json()["error"]
        assert r.status_code == 400 and "stage_1.onnx: sha256 mismatch" in message
        assert message.startswith("cannot load model 'tiny': ")
        assert message.endswith("(still serving version 2)") and "\n" not in message
        with pytest.raises(InferenceServerException) as refused:
            rpc.load_model("tiny", headers=GRPC_AUTH)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert refused.value.message() == message
        assert infer(server).json()["model_version"] == "2"
        index = rpc.get_model_repository_index(headers=GRPC_AUTH, as_json=True)["models"]
        entry = next(e for e in index if e.get("version") == "3")
        assert entry["state"] == "UNAVAILABLE" and "sha256 mismatch" in entry["reason"]
        shutil.rmtree(bad)

        # Unload over gRPC: the name is gone from inference; load brings it back.
        rpc.unload_model("other", headers=GRPC_AUTH)
        assert infer(server, "other").status_code == 404
        with pytest.raises(InferenceServerException, match="unknown model 'other'"):
            rpc.is_model_ready("other")
        ready = rpc.get_model_repository_index(headers=GRPC_AUTH, as_json=True)["models"]
        assert {e["name"] for e in ready if e.get("state") == "READY"} == {"tiny"}
        rpc.load_model("other", headers=GRPC_AUTH)
        assert infer(server, "other").status_code == 200
        with pytest.raises(InferenceServerException, match="no model directory for 'nope'"):
            http.load_model("nope", headers=AUTH)
        with pytest.raises(InferenceServerException, match=r"parameters \['config'\]"):
            http.load_model("tiny", headers=AUTH, config=json.dumps({"backend": "onnx"}))
        assert "Traceback" not in server.logs()


def test_poll_mode_loads_new_versions_and_refuses_broken_ones(
    versions: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    add_version(versions, root, 1)
    env = {**SERVE_ENV, "ELF_REPOSITORY_POLL_S": "0.2"}
    with live_server(root, tmp_path / "serve.log", **env) as server:

        def serving() -> str:
            return str(infer(server).json()["model_version"])

        add_version(versions, root, 2)
        wait_for(lambda: serving() == "2", "the poll loads version 2")
        bad = add_version(versions, root, 3)
        (bad / "manifest.json").write_text("{not json")
        wait_for(lambda: "not loaded: " in server.logs() or "poll: " in server.logs(), "refusal")
        assert serving() == "2"
        shutil.rmtree(bad)
        shutil.rmtree(root / "tiny")
        wait_for(lambda: infer(server).status_code == 404, "the poll unloads the removed model")


def test_several_versions_served_with_the_version_in_route_and_metrics(
    versions: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    for v in (1, 2):
        add_version(versions, root, v)
    env = {**SERVE_ENV, "ELF_MODEL_VERSIONS": "2"}
    with live_server(root, tmp_path / "serve.log", **env) as server:
        assert httpx.get(f"{server.url}/v2/models/tiny").json()["versions"] == ["1", "2"]
        for served in ("1", "2"):
            r = infer(server, version=served)
            assert r.json()["model_version"] == served
            want = final_probs(root / "tiny" / served)
            np.testing.assert_allclose(answered_probs(r), want, rtol=1e-5)
        assert infer(server).json()["model_version"] == "2"  # the newest
        v1 = httpx.post(f"{server.url}/v1/classify?exit=final", files={"file": PNG}).json()
        assert v1["version"] == "2"
        text = httpx.get(f"{server.url}/metrics").text
        assert 'elf_images_total{model="tiny",version="1"} 1.0' in text
        assert 'elf_images_total{model="tiny",version="2"} 3.0' in text
        info_v1 = 'model="tiny",providers="CPUExecutionProvider",version="1"'
        assert f"elf_model_info{{{info_v1}}} 1.0" in text
        # A third version: the newest two serve, version 1 drains and its gauges go.
        add_version(versions, root, 3)
        r = httpx.post(f"{server.url}/v2/repository/models/tiny/load", headers=AUTH)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server.url}/v2/models/tiny").json()["versions"] == ["2", "3"]
        assert infer(server).json()["model_version"] == "3"
        text = httpx.get(f"{server.url}/metrics").text
        assert f"elf_model_info{{{info_v1}}}" not in text
        assert 'elf_images_total{model="tiny",version="3"} 1.0' in text
