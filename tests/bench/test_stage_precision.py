"""bench.stage_variants on two tiny generated stage graphs (real quantisation, real ONNX Runtime)
and the pure parts of bench.stage_precision_report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.stage_precision_report import markdown, merge_result, mix_cost, verdicts
from bench.stage_variants import build_variant
from model_export.quantize.stages import ArrayReader, stage_inputs
from model_export.runtime import StageChain


def _stage(path: Path, c_in: int, c_out: int, seed: int, last: bool) -> None:
    """input [B, c_in, 8, 8] -> Conv 3x3 + Relu = features [B, c_out, 8, 8];
    GlobalAveragePool + Flatten + Gemm = logits [B, 4]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (c_out, c_in, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(0, 0.5, (4, c_out)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
    ]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])]
    if not last:
        feat = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", c_out, 8, 8])
        outs.insert(0, feat)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c_in, 8, 8])
    graph = helper.make_graph(nodes, "stage", [inp], outs, initializer=[w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("stages")
    paths = [root / "stage_0.onnx", root / "stage_1.onnx"]
    _stage(paths[0], 1, 8, 0, last=False)
    _stage(paths[1], 8, 8, 1, last=True)
    return paths


def test_array_reader_yields_every_row_once_in_batches() -> None:
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    r = ArrayReader(x, batch=8)
    got = []
    while (b := r.get_next()) is not None:
        got.append(b["input"])
    assert [len(b) for b in got] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(got), x)
    r.rewind()
    first = r.get_next()
    assert first is not None and first["input"][0, 0] == 0


def test_stage_inputs_are_the_previous_stages_features(stages: list[Path]) -> None:
    x = np.random.default_rng(2).normal(size=(5, 1, 8, 8)).astype(np.float32)
    inputs = stage_inputs(stages, x)
    assert [a.shape for a in inputs] == [(5, 1, 8, 8), (5, 8, 8, 8)]
    assert inputs[1].min() >= 0  # after the Relu
    assert not np.allclose(inputs[1][:, :1], x)


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_variants_keep_the_interface_and_stay_close_to_fp32(
    stages: list[Path], variant: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    calib = rng.normal(size=(32, 1, 8, 8)).astype(np.float32)
    built = build_variant(variant, stages, calib, tmp_path / variant)
    assert isinstance(built, list), built
    assert [p.name for p in built] == ["stage_0.onnx", "stage_1.onnx"]
    if variant == "int8":
        ops = {n.op_type for n in onnx.load(str(built[0])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    ref, got = StageChain(stages)(x), StageChain(built)(x)
    for r, g in zip(ref, got, strict=True):
        assert g.dtype == np.float32 and g.shape == r.shape
        assert np.corrcoef(g.ravel(), r.ravel())[0, 1] > 0.95  # close, but
    if variant == "int8":
        assert not np.array_equal(got[-1], ref[-1])  # really quantised


def test_a_variant_that_cannot_be_built_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "stage_0.onnx"
    bad.write_bytes(b"not onnx")
    why = build_variant("int8", [bad], np.zeros((2, 1, 8, 8), np.float32), tmp_path / "out")
    assert isinstance(why, str) and why


def test_mix_cost_charges_each_row_the_stages_it_ran() -> None:
    assert mix_cost([1.0, 2.0, 3.0], [0.5, 0.25, 0.25]) == pytest.approx(0.5 + 0.75 + 1.5)
    assert mix_cost([1.0, 2.0], [0.0, 1.0]) == pytest.approx(3.0)


def _entry(model: str, int8_ms: list[float], int8_bacc: float) -> dict[str, object]:
    def v(ms: list[float], bacc: float) -> dict[str, object]:
        return {
            "stage_ms_per_image": ms, "exit_rates": [0.5, 0.5], "balanced_accuracy": bacc,
            "final_exit_balanced_accuracy": bacc, "answer_agreement": 1.0, "exit_agreement": 1.0,
        }  # fmt: skip

    return {
        "model": model, "model_dir": "m", "name": model, "command": "python -m x",
        "machine": {"packages": {}, "load_average_1_5_15": [0, 0, 0], "nproc": 2, "cpu_model":
                    "cpu", "memory_gib": 1, "kernel": "k", "python": "3", "git_commit": "c",
                    "wrk": "w", "date": "d"},
        "evaluation": "val", "calibration": "train", "thresholds": [0.5, 0.0], "batch": 32,
        "reps": 1, "calls": 1, "failed": {"fp16": "NotImplemented: Conv"},
        "variants": {"fp32": v([1.0, 1.0], 0.9), "int8": v(int8_ms, int8_bacc)},
    }  # fmt: skip


def test_verdict_needs_both_speed_and_accuracy() -> None:
    fast_ok = verdicts(_entry("bundled", [0.5, 0.5], 0.897))
    assert fast_ok["int8"]["mix_vs_fp32"] == pytest.approx(0.5)
    assert fast_ok["int8"]["cost_pt"] == pytest.approx(0.3)
    assert fast_ok["int8"]["passes"] and not fast_ok["fp32"]["passes"]
    assert not verdicts(_entry("bundled", [0.5, 0.5], 0.89))["int8"]["passes"]  # 1 pt lost
    assert not verdicts(_entry("bundled", [0.95, 0.95], 0.9))["int8"]["passes"]  # 5% faster


def test_merge_replaces_the_models_entry_and_the_report_names_failures(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(merge_result(path, _entry("heavy", [0.5, 0.5], 0.9))))
    path.write_text(json.dumps(merge_result(path, _entry("bundled", [0.5, 0.5], 0.9))))
    result = merge_result(path, _entry("heavy", [0.8, 0.8], 0.9))
    assert [m["model"] for m in result["models"]] == ["bundled", "heavy"]
    assert result["models"][1]["variants"]["int8"]["stage_ms_per_image"] == [0.8, 0.8]
    text = markdown(result)
    assert "**fp16 not measured**: NotImplemented: Conv" in text
    assert "| int8 | 0.8000 (0.80x) | 0.8000 (0.80x) | 1.6000 | 0.800 |" in text
    assert "balanced accuracy lost: int8." in text
