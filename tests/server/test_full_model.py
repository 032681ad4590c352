"""exit=final through full.onnx (server/full_model.py): the stage chain's final answer, in one ONNX
Runtime call per batch, at the backbone's FLOPs; the stage chain where full.onnx is not the
backbone alone."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from elf_core.exits import softmax
from elf_core.manifest import load_manifest, sha256_file, write_manifest
from server.app import create_app
from server.metrics import Metrics
from server.preprocess import decode_all
from server.registry import load_model
from tests.server.conftest import files, make_settings
from tests.server.live import REPO, LiveServer, live_server

BUNDLED = REPO / "models" / "fashion-mnist-lt"
EXAMPLES = sorted((REPO / "examples" / "images").glob("*.png"))


def chain_final_probs(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """The stage chain's final exit with plain sess.run, stage after stage: softmax [N, C]."""
    h: np.ndarray | None = x
    logits = np.empty(0)
    for s in load_manifest(model_dir).stages:
        sess = ort.InferenceSession(str(model_dir / s.file), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(None, {s.input.name: h}), strict=True))
        h, logits = (outs[s.features.name] if s.features else None), outs[s.logits.name]
    return softmax(logits)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def two_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One elf-serve holding the tiny fixture model and the bundled one."""
    root = tmp_path_factory.mktemp("full-models")
    (root / "tiny").symlink_to(tiny_model_dir)
    (root / BUNDLED.name).symlink_to(BUNDLED)
    log = root.parent / "serve.log"
    env = {"ELF_MAX_BATCH_SIZE": "8", "ELF_INTRA_OP_THREADS": "1", "ELF_GRPC_PORT": "0"}
    with live_server(root, log, ELF_WARMUP_ALL_BATCH_SIZES="false", **env) as server:
        yield server


@pytest.mark.integration
@pytest.mark.parametrize("name", ["tiny", BUNDLED.name])
def test_exit_final_answers_as_the_stage_chains_final_exit_at_the_backbones_flops(
    two_models: LiveServer, tiny_model_dir: Path, pngs: list[bytes], name: str
) -> None:
    model_dir = tiny_model_dir if name == "tiny" else BUNDLED
    images = pngs[:16] if name == "tiny" else [p.read_bytes() for p in EXAMPLES]
    m = load_manifest(model_dir)
    k, n, classes = m.num_exits, len(images), len(m.class_names)
    x = np.stack(decode_all([(str(i), b) for i, b in enumerate(images)], m.preprocessing, 10**7))
    want = chain_final_probs(model_dir, x)
    url = two_models.url
    before = scrape(url)
    r = httpx.post(f"{url}/v1/models/{name}/classify?exit=final&top_k={classes}",
                   files=files(images), timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    for res, p in zip(r.json()["results"], want, strict=True):
        c = int(p.argmax())
        assert (res["class_index"], res["label"]) == (c, m.class_names[c])
        assert res["confidence"] == pytest.approx(p[c], abs=1e-4)
        got = {t["class_index"]: t["confidence"] for t in res["top_k"]}
        assert np.allclose([got[j] for j in range(classes)], p, atol=1e-4)
        assert res["exit"] == {"index": k - 1, "count": k, "threshold": 0.0}
        assert res["flops"] == {"executed": m.flops_full, "full": m.flops_full, "saved_ratio": 0.0}
    # Open Inference Protocol: the parameter exit "final" takes the same path.
    data = [base64.b64encode(b).decode() for b in images]
    body = {"inputs": [{"name": "input", "shape": [n], "datatype": "BYTES", "data": data}],
            "parameters": {"exit": "final"}}  # fmt: skip
    out = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30).json()["outputs"]
    v2 = {o["name"]: o["data"] for o in out}
    assert v2["class_index"] == want.argmax(1).tolist()
    assert v2["exit_index"] == [k - 1] * n and v2["flops_executed"] == [m.flops_full] * n
    assert np.allclose(np.reshape(v2["probabilities"], (n, classes)), want, atol=1e-4)
    # Counted as answers at the final exit, at the backbone's FLOPs, in batches of stage "full".
    after = scrape(url)

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    v = m.version
    assert delta("elf_exits_total", model=name, version=v, exit=str(k - 1)) == 2 * n
    assert delta("elf_images_total", model=name, version=v) == 2 * n
    assert delta("elf_flops_executed_total", model=name, version=v) == 2 * n * m.flops_full
    assert delta("elf_batch_size_sum", model=name, stage="full") == 2 * n
    assert delta("elf_batch_size_sum", model=name, stage="0") == 0
    assert f"{name}: exit=final runs full.onnx in one call" in two_models.log.read_text()


def _counting(sess: ort.InferenceSession, calls: list[int]) -> Any:
    """The real session, with its runs counted (everything else passes through)."""

    class Counting:
        def __getattr__(self, attr: str) -> Any:
            return getattr(sess, attr)

        def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return sess.run_with_iobinding(*args, **kwargs)

        def run(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return sess.run(*args, **kwargs)

    return Counting()


def test_one_onnx_runtime_call_per_batch(tiny_model_dir: Path, pixels: np.ndarray) -> None:
    settings = make_settings(tiny_model_dir, max_batch_size=4, warmup_all_batch_sizes=False)
    metrics = Metrics()
    model = load_model(tiny_model_dir, load_manifest(tiny_model_dir), settings, metrics)
    assert model.full is not None
    full_calls: list[int] = []
    stage_calls: list[int] = []
    sessions = model.full.batcher.executor.stages.sessions  # type: ignore[attr-defined]
    sessions[0] = _counting(sessions[0], full_calls)
    stages = model.runner.stages.sessions
    stages[:] = [_counting(s, stage_calls) for s in stages]
    x = ((pixels[:10].astype(np.float32) / 255.0 - 0.5) / 0.25)[:, None]
    model.start()
    try:
        results = asyncio.run(model.full.infer(list(x), 10.0))
    finally:
        model.stop(10.0)
    batch = metrics.registry.get_sample_value
    batches = batch("elf_batch_size_count", {"model": "tiny", "stage": "full"})
    assert batches == 3 and batch("elf_batch_size_sum", {"model": "tiny", "stage": "full"}) == 10
    assert len(full_calls) == 3 and stage_calls == []  # 4 + 4 + 2 rows: one call each
    assert [r.exit_index for r in results] == [2] * 10
    want = chain_final_probs(tiny_model_dir, x)
    assert np.allclose(np.stack([r.probs for r in results]), want, atol=1e-6)


@pytest.mark.parametrize("case", ["every exit's logits", "no full.onnx"])
def test_exit_final_runs_the_stages_without_a_backbone_graph(
    tiny_model_dir: Path, tmp_path: Path, pngs: list[bytes], case: str
) -> None:
    d = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, d)
    m = load_manifest(d)
    if case == "no full.onnx":
        (d / "full.onnx").unlink()
        m = m.model_copy(update={"full_model": None})
    else:  # an older export's full.onnx: two outputs (stage 0's graph stands in for one)
        shutil.copy(d / "stage_0.onnx", d / "full.onnx")
        ref = m.full_model.model_copy(update={"sha256": sha256_file(d / "full.onnx")})  # type: ignore[union-attr]
        m = m.model_copy(update={"full_model": ref})
    write_manifest(m, d)
    with TestClient(create_app(make_settings(d))) as c:
        assert c.app.state.elf.registry.get().full is None  # type: ignore[attr-defined]
        res = c.post("/v1/classify?exit=final", files=files(pngs[:4])).json()["results"]
    assert [x["exit"]["index"] for x in res] == [2] * 4
    # Every exit head ran on the way: the final exit's cumulative FLOPs, above the backbone's.
    assert {x["flops"]["executed"] for x in res} == {m.exits[-1].cumulative_flops}
    assert m.exits[-1].cumulative_flops > m.flops_full
