"""The ONNX Runtime side: merge graph bytes, IOBinding runner parity, providers, loading checks."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from elf_core.manifest import ManifestError, load_manifest
from server.engine.onnx_bytes import merge_rows_model
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import EngineError, load_stage_sessions
from server.metrics import Metrics
from server.model_repository import model_dirs
from server.registry import load_models
from tests.server.conftest import make_settings
from tests.server.tiny_model import build_tiny_model, normalise


@pytest.mark.parametrize(
    ("n", "rank", "dtype"), [(1, 4, "float32"), (3, 2, "float32"), (2, 4, "float16")]
)
def test_merge_graph_is_valid_onnx_and_gathers_rows(n: int, rank: int, dtype: str) -> None:
    data = merge_rows_model(n, rank, dtype)
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(n)
    parts = [rng.normal(size=(b, *[3] * (rank - 1))).astype(dtype) for b in range(1, n + 1)]
    rows = rng.integers(0, sum(len(p) for p in parts), 5).astype(np.int64)
    feeds = {f"x_{i}": p for i, p in enumerate(parts)} | {"rows": rows}
    np.testing.assert_array_equal(sess.run(None, feeds)[0], np.concatenate(parts)[rows])


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> OnnxStageRunner:
    manifest = load_manifest(tiny_model_dir)
    settings = make_settings(tiny_model_dir)
    stages = load_stage_sessions(manifest, tiny_model_dir, settings)
    return OnnxStageRunner(manifest, stages, max_parts=settings.max_batch_size)


@pytest.fixture(scope="module", params=["host", "graph"])
def merger(request: pytest.FixtureRequest, tiny_model_dir: Path) -> OnnxStageRunner:
    """Both merges of CPU features: numpy (the CPU default) and the merge graph (CUDA's)."""
    manifest = load_manifest(tiny_model_dir)
    settings = make_settings(tiny_model_dir)
    stages = load_stage_sessions(manifest, tiny_model_dir, settings)
    host = request.param == "host"
    return OnnxStageRunner(manifest, stages, settings.max_batch_size, host_merge=host)


def test_iobinding_chain_equals_plain_session_runs(
    runner: OnnxStageRunner, tiny_model_dir: Path, pixels: np.ndarray
) -> None:
    x = normalise(pixels[:5])
    h = runner.to_device(x)
    plain = x
    for k in range(3):
        sess = ort.InferenceSession(
            str(tiny_model_dir / f"stage_{k}.onnx"), providers=["CPUExecutionProvider"]
        )
        expected = sess.run(None, {"input": plain})
        h, logits = runner.run(k, h)
        np.testing.assert_allclose(logits, expected[-1], rtol=1e-5, atol=1e-5)
        if k < 2:
            assert isinstance(h, ort.OrtValue) and h.device_name().lower() == "cpu"
            np.testing.assert_allclose(h.numpy(), expected[0], rtol=1e-5, atol=1e-6)
            plain = expected[0]
        else:
            assert h is None


def test_runner_merge_drops_and_joins_rows_on_the_device(
    merger: OnnxStageRunner, pixels: np.ndarray
) -> None:
    runner = merger
    a, _ = runner.run(0, runner.to_device(normalise(pixels[:4])))
    b, _ = runner.run(0, runner.to_device(normalise(pixels[4:7])))
    assert a is not None and b is not None
    merged = runner.merge([(a, np.array([1, 3])), (b, np.array([0, 2]))])
    expected = np.concatenate([a.numpy()[[1, 3]], b.numpy()[[0, 2]]])
    np.testing.assert_array_equal(merged.numpy(), expected)
    # Nothing dropped, one part: the same OrtValue goes on, no copy.
    assert runner.merge([(a, np.arange(4))]) is a
    # The merged batch is a copy: rewriting it leaves the parts (still queued elsewhere) alone.
    before = a.numpy().copy()
    merged.numpy()[:] = 7.0
    np.testing.assert_array_equal(a.numpy(), before)
    assert merged.numpy().ctypes.data not in (a.data_ptr(), b.data_ptr())


def test_host_merge_is_the_cpu_default_and_refused_off_cpu(runner: OnnxStageRunner) -> None:
    assert runner.device == "cpu" and runner.host_merge
    stages = dataclasses.replace(runner.stages, device="cuda")
    with pytest.raises(ValueError, match="host_merge needs CPU features"):
        OnnxStageRunner(runner.manifest, stages, host_merge=True)


def test_warm_up_makes_one_merge_graph_of_max_batch_size_inputs(tiny_model_dir: Path) -> None:
    manifest = load_manifest(tiny_model_dir)
    settings = make_settings(tiny_model_dir, max_batch_size=4)
    stages = load_stage_sessions(manifest, tiny_model_dir, settings)
    host = OnnxStageRunner(manifest, stages, max_parts=4)
    host.warm_up([1, 2])
    assert host._merge == {}  # CPU features merge in numpy: no graph to build
    r = OnnxStageRunner(manifest, stages, max_parts=4, host_merge=False)
    r.warm_up([1, 2, 3, 4])
    assert list(r._merge) == [(4, "float32")]
    assert [i.name for i in r._merge[4, "float32"].get_inputs()] == [
        "x_0", "x_1", "x_2", "x_3", "rows",
    ]  # fmt: skip


def per_arity_merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The previous engine: a merge graph with exactly len(parts) inputs."""
    sess = ort.InferenceSession(
        merge_rows_model(len(parts), parts[0][0].ndim), providers=["CPUExecutionProvider"]
    )
    offsets = np.cumsum([0] + [len(x) for x, _ in parts[:-1]])
    rows = np.concatenate([r + o for (_, r), o in zip(parts, offsets, strict=True)])
    feeds = {f"x_{i}": x for i, (x, _) in enumerate(parts)} | {"rows": rows.astype(np.int64)}
    out: np.ndarray = sess.run(None, feeds)[0]
    return out


@pytest.mark.parametrize("arity", list(range(1, 12)))
def test_one_padded_merge_graph_equals_the_per_arity_graphs(
    merger: OnnxStageRunner, arity: int
) -> None:
    """Every arity up to and past the graph's inputs (8 here: more are joined in groups); the
    numpy merge gives the same bytes."""
    runner = merger
    assert runner.merge_arity == 8
    rng = np.random.default_rng(arity)
    parts = []
    for _ in range(arity):
        x = rng.normal(size=(int(rng.integers(1, 9)), 16, 14, 14)).astype(np.float32)
        rows = np.sort(rng.choice(len(x), int(rng.integers(1, len(x) + 1)), replace=False))
        parts.append((x, rows.astype(np.int64)))
    merged = runner.merge([(runner.to_device(x), r) for x, r in parts]).numpy()
    expected = np.concatenate([x[r] for x, r in parts])
    np.testing.assert_array_equal(merged, expected)
    np.testing.assert_array_equal(merged, per_arity_merge(parts))
    assert len(runner._merge) == (0 if runner.host_merge else 1)


def test_merge_refuses_rows_outside_a_part(merger: OnnxStageRunner) -> None:
    runner = merger
    a = runner.to_device(np.zeros((3, 16, 14, 14), np.float32))
    b = runner.to_device(np.zeros((2, 16, 14, 14), np.float32))
    with pytest.raises(EngineError, match=r"merge part 1: rows \[0, 2\] outside \[0, 2\)"):
        runner.merge([(a, np.array([0, 2])), (b, np.array([0, 2]))])
    with pytest.raises(EngineError, match="merge part 0"):
        runner.merge([(a, np.array([-1])), (b, np.array([0]))])


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_corrupted_stage_file_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "stage_1.onnx").write_bytes((d / "stage_1.onnx").read_bytes()[:-10])
    with pytest.raises(ManifestError, match=r"stage_1\.onnx: sha256 mismatch"):
        load_models(make_settings(d), Metrics())


def test_graph_names_must_match_the_manifest(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "m")
    raw = json.loads((d / "manifest.json").read_text())
    raw["stages"][0]["logits"]["name"] = "scores"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=r"stage_0\.onnx: graph has inputs"):
        load_models(make_settings(d), Metrics())


def test_model_discovery(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert model_dirs(tiny_model_dir) == [(tiny_model_dir, None)]
    with pytest.raises(ManifestError, match="does not exist"):
        model_dirs(tmp_path / "missing")
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        load_models(make_settings(tmp_path), Metrics())
    build_tiny_model(tmp_path / "one", name="same")
    build_tiny_model(tmp_path / "two", name="same")
    with pytest.raises(ManifestError, match="'same' is also used by"):
        load_models(make_settings(tmp_path), Metrics())


def test_unknown_default_model_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ManifestError, match="ELF_DEFAULT_MODEL='other'"):
        load_models(make_settings(tiny_model_dir, default_model="other"), Metrics())
