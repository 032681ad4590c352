"""The CUDA path: same code as on CPU, features on the GPU between stages (IOBinding).

Skipped only where onnxruntime has no CUDAExecutionProvider or no GPU is visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from elf_core.exits import early_exit
from elf_core.manifest import load_manifest
from server.app import create_app
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import CUDA, load_stage_sessions
from tests.server.conftest import files, make_settings
from tests.server.tiny_model import normalise

HAS_CUDA = CUDA in ort.get_available_providers() and Path("/dev/nvidia0").exists()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in onnxruntime or no GPU"),
]
# cuDNN may pick TF32 / other conv algorithms: allow small numeric differences.
TOL = 2e-3


def test_features_stay_on_the_gpu_and_merge_there(tiny_model_dir: Path, pixels: np.ndarray) -> None:
    manifest = load_manifest(tiny_model_dir)
    settings = make_settings(tiny_model_dir, providers="cuda")
    runner = OnnxStageRunner(manifest, load_stage_sessions(manifest, tiny_model_dir, settings))
    assert runner.device == "cuda" and runner.stages.providers[0] == CUDA
    runner.warm_up([1, 2, 3, 4])
    a, logits = runner.run(0, runner.to_device(normalise(pixels[:4])))
    assert a is not None and a.device_name().lower() == "cuda"
    assert isinstance(logits, np.ndarray) and logits.shape == (4, 10)
    b, _ = runner.run(0, runner.to_device(normalise(pixels[4:7])))
    assert b is not None
    merged = runner.merge([(a, np.array([1, 3])), (b, np.array([0, 2]))])
    assert merged.device_name().lower() == "cuda"
    expected = np.concatenate([a.numpy()[[1, 3]], b.numpy()[[0, 2]]])
    np.testing.assert_array_equal(merged.numpy(), expected)


def test_cuda_server_answers_like_the_cpu_oracle(
    tiny_model_dir: Path, pngs: list[bytes], offline_probs: list[np.ndarray]
) -> None:
    manifest = load_manifest(tiny_model_dir)
    pred, exits = early_exit(offline_probs, manifest.thresholds)
    with TestClient(create_app(make_settings(tiny_model_dir, providers="cuda"))) as c:
        detail = c.get("/v1/models/tiny").json()
        assert detail["providers"][0] == CUDA and detail["device"] == "cuda"
        results = c.post("/v1/classify", files=files(pngs[:32])).json()["results"]
        for i, r in enumerate(results):
            conf_at = [offline_probs[k][i].max() for k in range(3)]
            near = any(abs(conf_at[k] - manifest.thresholds[k]) < TOL for k in range(2))
            if not near:  # a confidence within TOL of a threshold may legitimately flip
                assert (r["class_index"], r["exit"]["index"]) == (pred[i], exits[i])
                assert r["confidence"] == pytest.approx(conf_at[exits[i]], abs=TOL)
        assert f'providers="{CUDA},CPUExecutionProvider"' in c.get("/metrics").text
