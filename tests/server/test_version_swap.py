"""Five version swaps under a bounded 32-way load (loopback; HTTP and gRPC clients together):
every request is answered with 200, by a version that was whole (its answer equals that version's
offline answer), and traffic reaches each new version; the old ones drain and are unloaded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp

from tests.server.live import LiveServer, live_server
from tests.server.test_repository import AUTH, SERVE_ENV, X, add_version, final_probs, versions

pytestmark = pytest.mark.integration
__all__ = ["versions"]  # the module's fixture

CONCURRENCY, GRPC_CLIENTS = 32, 8  # 8 of the 32 clients over gRPC
MAX_REQUESTS, MAX_SECONDS = 6000, 90.0


class Load:
    """32 closed-loop clients on a thread of their own until stopped (or the bounds are hit)."""

    def __init__(self, server: LiveServer, expected: dict[str, np.ndarray]) -> None:
        self.server, self.expected = server, expected
        self.answers: Counter[str] = Counter()  # version -> answers equal to its oracle
        self.wrong: list[str] = []  # anything else: an error, or an answer from no whole version
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.deadline = time.monotonic() + MAX_SECONDS

    def _check(self, version: str, probs: np.ndarray) -> None:
        want = self.expected.get(version)
        if want is None or not np.allclose(probs, want, rtol=1e-5, atol=1e-7):
            self.wrong.append(f"version {version!r}: probabilities {probs.tolist()}")
        else:
            self.answers[version] += 1

    def _more(self) -> bool:
        self.sent += 1
        over = self.sent > MAX_REQUESTS or time.monotonic() > self.deadline
        return not (self.stop.is_set() or over)

    async def _http(self, client: httpx.AsyncClient) -> None:
        body = {
            "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                        "data": X.ravel().tolist()}],
            "parameters": {"exit": "final"},
        }  # fmt: skip
        while self._more():
            try:
                r = await client.post("/v2/models/tiny/infer", json=body)
                out = r.json()
                if r.status_code != 200:
                    self.wrong.append(f"HTTP {r.status_code}: {out}")
                    continue
                probs = next(o for o in out["outputs"] if o["name"] == "probabilities")["data"]
                self._check(out["model_version"], np.array(probs))
            except Exception as exc:
                self.wrong.append(f"HTTP {exc!r}")

    async def _grpc(self, client: tgrpc_aio.InferenceServerClient) -> None:
        inp = tgrpc_aio.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        while self._more():
            try:
                result = await client.infer("tiny", [inp], parameters={"exit": "final"})
                self._check(
                    result.get_response().model_version, result.as_numpy("probabilities")[0]
                )
            except Exception as exc:
                self.wrong.append(f"gRPC {exc!r}")

    async def _run(self) -> None:
        assert self.server.grpc_target is not None
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=self.server.url, limits=limits, timeout=30) as h:
            g = tgrpc_aio.InferenceServerClient(self.server.grpc_target)
            try:
                clients = [self._grpc(g) for _ in range(GRPC_CLIENTS)]
                clients += [self._http(h) for _ in range(CONCURRENCY - GRPC_CLIENTS)]
                await asyncio.gather(*clients)
            finally:
                await g.close()


def test_five_swaps_under_load_fail_no_request(versions: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    add_version(versions, root, 1)
    expected = {str(v): final_probs(versions / str(v)) for v in range(1, 7)}
    with live_server(root, tmp_path / "serve.log", **SERVE_ENV) as server:
        admin = thttp.InferenceServerClient(server.url[len("http://") :], network_timeout=60)
        load = Load(server, expected)
        load.thread.start()
        try:
            for v in range(2, 7):
                deadline = time.monotonic() + 30
                while load.answers[str(v - 1)] < 16:  # the load is on the current version
                    assert time.monotonic() < deadline and not load.wrong, load.wrong[:3]
                    time.sleep(0.01)
                add_version(versions, root, v)
                admin.load_model("tiny", headers=AUTH)  # returns once the old one is unloaded
                index = admin.get_model_repository_index(headers=AUTH)
                assert [e["version"] for e in index if e["state"] == "READY"] == [str(v)]
            deadline = time.monotonic() + 30
            while load.answers["6"] == 0:
                assert time.monotonic() < deadline and not load.wrong, load.wrong[:3]
                time.sleep(0.01)
        finally:
            load.stop.set()
            load.thread.join(60)
        assert not load.thread.is_alive()
        assert load.wrong == [], load.wrong[:5]
        assert set(load.answers) == {str(v) for v in range(1, 7)}, load.answers
        logs = server.logs()
        assert "still held" not in logs and "Traceback" not in logs
