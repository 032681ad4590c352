"""The CUDA path: the server's code on a GPU, sessions built without CPU fallback.

A GPU is detected by asking onnxruntime (its providers, and a CUDA session that really starts
and runs), not by device files. Without one these tests are skipped, except under
ELF_REQUIRE_GPU=1 (a GPU machine, bench/gpu_smoke.py), where they fail instead.
TF32 is off (the default): parity with the CPU is held to float32 rounding, per exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from bench.gpu_tools import forbid_host_copies, gpu_memory_used_mib, random_batches
from elf_core.exits import early_exit, softmax
from elf_core.manifest import load_manifest
from server.app import create_app
from server.engine.placement import node_providers, probe_cuda
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import CUDA, load_stage_sessions
from tests.server.conftest import files, make_settings

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "fashion-mnist-lt"
TOL = 1e-4  # probabilities, TF32 off: cuDNN and MLAS differ in summation order only
pytestmark = pytest.mark.gpu


# session scope: decided before the (session-scoped) model fixtures are built
@pytest.fixture(scope="session", autouse=True)
def gpu() -> None:
    reason = probe_cuda()
    if reason is None:
        return
    if os.environ.get("ELF_REQUIRE_GPU") == "1":
        pytest.fail(f"ELF_REQUIRE_GPU=1 but no usable GPU: {reason}", pytrace=False)
    pytest.skip(f"no usable GPU: {reason}")


def cuda_runner(model_dir: Path, **overrides: object) -> OnnxStageRunner:
    """Sessions as the server makes them with ELF_PROVIDERS=cuda, CUDA alone, no CPU fallback."""
    values = {"providers": "cuda", "cuda_cpu_fallback": False, "max_batch_size": 8} | overrides
    settings = make_settings(model_dir, **values)
    manifest = load_manifest(model_dir)
    stages = load_stage_sessions(manifest, model_dir, settings)
    return OnnxStageRunner(manifest, stages, max_parts=settings.max_batch_size)


def cpu_runner(model_dir: Path) -> OnnxStageRunner:
    manifest = load_manifest(model_dir)
    return OnnxStageRunner(
        manifest, load_stage_sessions(manifest, model_dir, make_settings(model_dir))
    )


@pytest.fixture(scope="module", params=["tiny", "bundled"])
def model_dir(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Path:
    return tiny_model_dir if request.param == "tiny" else BUNDLED


def inputs(model_dir: Path, n: int, pixels: np.ndarray) -> np.ndarray:
    """[n, 1, 28, 28] normalised with the model's own preprocessing statistics."""
    pre = load_manifest(model_dir).preprocessing
    x = pixels[:n].astype(np.float32)[:, None] / 255.0
    return ((x - pre.mean[0]) / pre.std[0]).astype(np.float32)


def test_every_node_runs_on_cuda(model_dir: Path, tmp_path: Path) -> None:
    """Strict sessions (no CPU fallback) start at all, and the profile shows every node on CUDA."""
    runner = cuda_runner(model_dir)
    assert runner.device == "cuda" and runner.stages.providers == [CUDA]
    opts = runner.stages.options
    for spec in runner.manifest.stages:
        prof = ort.SessionOptions()
        prof.enable_profiling = True
        prof.profile_file_prefix = str(tmp_path / spec.file)
        prof.log_severity_level = opts.log_severity_level
        prof.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        sess = ort.InferenceSession(
            str(model_dir / spec.file), prof, providers=runner.stages.requested
        )
        x = np.zeros((2, *[int(d) for d in sess.get_inputs()[0].shape[1:]]), np.float32)
        sess.run(None, {spec.input.name: x})
        placed = node_providers(sess.end_profiling())
        off = {n: v for n, v in placed.items() if v[1] != CUDA}
        assert placed and not off, f"{spec.file}: nodes not on CUDA: {off}"


def test_features_and_merges_stay_on_the_gpu(model_dir: Path, pixels: np.ndarray) -> None:
    runner = cuda_runner(model_dir)
    runner.warm_up([1, 4, 8])
    x = inputs(model_dir, 12, pixels)
    with forbid_host_copies("cuda") as host_reads:
        a, logits = runner.run(0, runner.to_device(x[:8]))
        b, _ = runner.run(0, runner.to_device(x[8:11]))
        assert a is not None and b is not None
        merged = [runner.merge([(a, np.array([1, 3])), (b, np.array([0, 2]))])]
        # every arity up to and past the graph's 8 inputs
        for n in range(1, 12):
            merged.append(runner.merge([(a, np.array([n % 8]))] * n))
        h, _ = runner.run(1, merged[0])
    assert host_reads == [(8, logits.shape[1]), (3, logits.shape[1]), (4, logits.shape[1])]
    for value in (a, b, h, *merged):
        assert value is not None and value.device_name().lower() == "cuda"
    expected = np.concatenate([a.numpy()[[1, 3]], b.numpy()[[0, 2]]])
    np.testing.assert_array_equal(merged[0].numpy(), expected)
    for n in range(1, 12):
        np.testing.assert_array_equal(merged[n].numpy(), np.repeat(a.numpy()[[n % 8]], n, 0))


def test_parity_with_the_cpu_per_exit(model_dir: Path, pixels: np.ndarray) -> None:
    gpu, cpu = cuda_runner(model_dir), cpu_runner(model_dir)
    x = inputs(model_dir, 64, pixels)
    hg, hc = gpu.to_device(x), cpu.to_device(x)
    thresholds = load_manifest(model_dir).thresholds
    for k in range(gpu.num_stages):
        assert hg is not None and hc is not None
        hg, lg = gpu.run(k, hg)
        hc, lc = cpu.run(k, hc)
        pg, pc = softmax(lg), softmax(lc)
        np.testing.assert_allclose(pg, pc, atol=TOL, err_msg=f"exit {k}")
        assert (pg.argmax(1) == pc.argmax(1)).mean() >= 0.99, f"exit {k}"
        if k >= len(thresholds):  # the manifest may leave out the last exit's 0
            continue
        conf_c = pc.max(1)
        far = np.abs(conf_c - thresholds[k]) > TOL  # nearer than TOL may flip legitimately
        np.testing.assert_array_equal(
            (pg.max(1) >= thresholds[k])[far], (conf_c >= thresholds[k])[far]
        )


def test_memory_levels_off_after_thousands_of_random_batches(tiny_model_dir: Path) -> None:
    runner = cuda_runner(tiny_model_dir, max_batch_size=32)
    runner.warm_up(list(range(1, 33)))
    levels: dict[int, float] = {}

    def sample(i: int) -> None:
        used = gpu_memory_used_mib(runner.device_id)
        assert used is not None, "nvidia-smi is needed to read GPU memory"
        levels[i] = used

    random_batches(runner, 3000, 32, seed=1, every=500, sample=sample)
    assert sorted(levels) == [500, 1000, 1500, 2000, 2500, 3000]
    growth = levels[3000] - levels[1500]
    assert growth <= 8.0, f"GPU memory still growing after 1500 batches: {levels} MiB"


@pytest.fixture
def cuda_app(tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(tiny_model_dir, providers="cuda", cuda_cpu_fallback=False)
    with TestClient(create_app(settings)) as c:
        yield c


def test_cuda_server_answers_like_the_cpu_oracle(
    cuda_app: TestClient, tiny_model_dir: Path, pngs: list[bytes], offline_probs: list[np.ndarray]
) -> None:
    manifest = load_manifest(tiny_model_dir)
    pred, exits = early_exit(offline_probs, manifest.thresholds)
    detail = cuda_app.get("/v1/models/tiny").json()
    assert detail["providers"] == [CUDA] and detail["device"] == "cuda"
    assert detail["warnings"] == []
    results = cuda_app.post("/v1/classify", files=files(pngs[:32])).json()["results"]
    for i, r in enumerate(results):
        conf_at = [offline_probs[k][i].max() for k in range(3)]
        near = any(abs(conf_at[k] - manifest.thresholds[k]) < TOL for k in range(2))
        if not near:  # a confidence within TOL of a threshold may legitimately flip
            assert (r["class_index"], r["exit"]["index"]) == (pred[i], exits[i])
            assert r["confidence"] == pytest.approx(conf_at[exits[i]], abs=TOL)
    assert f'providers="{CUDA}"' in cuda_app.get("/metrics").text
