"""End to end: a tiny trained network -> `elf-export` -> a model directory the manifest loader
accepts, whose ONNX stages match torch on every exit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from elf_core.flops import full_flops
from elf_core.manifest import ManifestError, load_manifest
from model_export.cli import main
from model_export.runtime import normalize
from model_export.verify import PARITY_ATOL
from server.app import create_app
from tests.model_export.conftest import Exported
from tests.server.conftest import make_settings
from training.checkpoint import load_model
from training.data import build_splits
from training.flops import stage_flops


def _sessions(model_dir: Path) -> tuple[list[ort.InferenceSession], ort.InferenceSession]:
    m = load_manifest(model_dir)
    stages = [ort.InferenceSession(str(model_dir / s.file)) for s in m.stages]
    assert m.full_model is not None
    return stages, ort.InferenceSession(str(model_dir / m.full_model.file))


def _chain(stages: list[ort.InferenceSession], x: np.ndarray) -> list[np.ndarray]:
    """Run the stage graphs one after another, as the server does (names from the contract)."""
    outs = []
    for k, sess in enumerate(stages):
        if k < len(stages) - 1:
            x, logits = sess.run(["features", "logits"], {"input": x})
        else:
            (logits,) = sess.run(["logits"], {"input": x})
        outs.append(logits)
    return outs


def test_model_dir_contents_and_manifest(exported: Exported) -> None:
    d = exported.model_dir
    names = {p.name for p in d.iterdir()}
    assert {"manifest.json", "stage_0.onnx", "stage_1.onnx", "stage_2.onnx", "full.onnx"} <= names
    assert {"calibration.json", "calibration.png", "config.json"} <= names
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")], "staging dir left over"
    m = load_manifest(d)
    splits = build_splits(exported.config.data)
    assert m.name == "tiny-lt" and m.version == "0.1"
    assert m.class_names == splits.class_names
    pre = m.preprocessing
    assert (pre.channels, pre.height, pre.width) == (1, 28, 28) and pre.resize == "resize"
    assert pre.mean == pytest.approx(list(splits.mean)) and pre.std == pytest.approx(
        list(splits.std)
    )
    assert m.provenance.dataset == splits.name and m.provenance.architecture == "resnet8"
    assert (m.provenance.method, m.provenance.loss, m.provenance.epochs) == ("elf", "ce", 1)
    train, export = (m.provenance.command or "").split("; export: ")
    assert train == f"train: {exported.config.command}"
    assert export.startswith("elf-export --checkpoint ") and "--version 0.1" in export
    assert json.loads((d / "config.json").read_text())["command"] == exported.config.command
    # Tensor specs: dim 0 symbolic, the rest concrete.
    assert m.stages[0].input.shape == ["batch", 1, 28, 28]
    assert m.stages[-1].features is None and m.stages[0].features is not None
    assert all(s.logits.shape == ["batch", 10] for s in m.stages)
    assert m.stages[1].input.shape == m.stages[0].features.shape


def test_flops_in_manifest_come_from_training_flops(exported: Exported) -> None:
    m = load_manifest(exported.model_dir)
    net, _ = load_model(exported.checkpoint)
    per_stage = stage_flops(net, (1, 28, 28))
    assert [(s.flops_body, s.flops_exit) for s in m.stages] == [tuple(p) for p in per_stage]
    assert m.flops_full == full_flops(per_stage)
    running = 0
    for e, (body, head) in zip(m.exits, per_stage, strict=True):
        running += body + head
        assert e.cumulative_flops == running
    # An image reaching the end costs more than the backbone alone (it passed the aux heads).
    assert m.exits[-1].cumulative_flops > m.flops_full


def test_stages_match_torch_on_every_exit_and_full_graph_on_the_final(
    exported: Exported,
) -> None:
    net, _ = load_model(exported.checkpoint)
    splits = build_splits(exported.config.data)
    images = splits.test.batch(torch.arange(64)).numpy()
    x = normalize(images, splits.mean, splits.std)
    with torch.no_grad():
        ref = [z.numpy() for z in net(torch.from_numpy(x))]
    stages, full = _sessions(exported.model_dir)
    chained = _chain(stages, x)
    whole = full.run(None, {"input": x})
    assert len(chained) == len(ref) == 3
    for k, r in enumerate(ref):
        assert np.abs(chained[k] - r).max() <= PARITY_ATOL, f"stage graphs, exit {k}"
    # full.onnx: the backbone alone, one output (the final exit's logits).
    assert [o.name for o in full.get_outputs()] == ["logits"] and len(whole) == 1
    assert np.abs(whole[0] - ref[-1]).max() <= PARITY_ATOL
    # The outputs are not trivially equal: the exits disagree with each other somewhere.
    assert not np.allclose(ref[0], ref[2])


def test_every_graph_has_a_dynamic_batch_axis(exported: Exported) -> None:
    for path in sorted(exported.model_dir.glob("*.onnx")):
        g = onnx.load(str(path))
        for vi in [*g.graph.input, *g.graph.output]:
            d0 = vi.type.tensor_type.shape.dim[0]
            assert d0.HasField("dim_param") and d0.dim_param, f"{path.name}:{vi.name} dim 0 fixed"
            assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim[1:])
    stages, full = _sessions(exported.model_dir)
    rng = np.random.default_rng(1)
    for b in (1, 3, 64):
        x = rng.standard_normal((b, 1, 28, 28)).astype(np.float32)
        assert [o.shape for o in _chain(stages, x)] == [(b, 10)] * 3
        assert [o.shape for o in full.run(None, {"input": x})] == [(b, 10)]


def test_calibration_outputs(exported: Exported) -> None:
    d = exported.model_dir
    m = load_manifest(d)
    cal = json.loads((d / "calibration.json").read_text())
    assert cal["split"] == "validation" and cal["images"] == 50
    assert len(cal["curve"]) > 20 and cal["pareto"]
    chosen, best = cal["chosen"], cal["best"]
    assert chosen["balanced_accuracy"] >= best["balanced_accuracy"] - cal["tolerance"] - 1e-12
    assert chosen["flops_ratio"] <= best["flops_ratio"]
    assert min(
        p["flops_ratio"]
        for p in cal["curve"]
        if p["balanced_accuracy"] >= best["balanced_accuracy"] - 0.005 - 1e-12
    ) == pytest.approx(chosen["flops_ratio"])
    assert cal["test"]["images"] == 120 and "test set" in cal["test"]["note"]
    assert cal["test"]["chosen"]["thresholds"] == chosen["thresholds"]
    # The manifest carries the chosen thresholds (last exit 0) and the test numbers.
    assert m.thresholds == pytest.approx(chosen["thresholds"])
    assert m.thresholds[-1] == 0.0
    assert m.calibration is not None and m.calibration.test is not None
    assert m.calibration.test.balanced_accuracy == pytest.approx(
        cal["test"]["chosen"]["balanced_accuracy"]
    )
    assert m.calibration.tolerance == 0.005 and m.calibration.final_exit_only is not None
    with Image.open(d / "calibration.png") as img:
        assert img.format == "PNG" and img.size[0] > 300
    # The CLI's summary: per exit threshold, rate, accuracy, FLOPs; validation and test.
    out = exported.stdout
    assert "validation (50 images)" in out and "test (120 images)" in out
    assert f"{m.exits[1].cumulative_flops:,}" in out and "max abs diff" in out


def _copy(exported: Exported, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported.model_dir, tmp_path / "copy"))


def test_corrupted_stage_file_is_refused_by_name(exported: Exported, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    data = bytearray((d / "stage_1.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "stage_1.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"stage_1\.onnx: sha256 mismatch"):
        load_manifest(d)


def test_missing_file_is_refused_by_name(exported: Exported, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    (d / "full.onnx").unlink()
    with pytest.raises(ManifestError, match=r"full\.onnx: missing"):
        load_manifest(d)


def test_wrong_sha256_in_manifest_is_refused_by_name(exported: Exported, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    raw["stages"][2]["sha256"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=r"stage_2\.onnx: sha256 mismatch"):
        load_manifest(d)


def test_tail_protected_recalibration_is_recorded_and_served(
    exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(exported, tmp_path)
    args = ["calibrate", "--model-dir", str(d), "--no-progress", "--tolerance", "0.05"]
    assert main([*args, "--tail-tolerance", "0.02", "--protect-classes", "8,9"]) == 0
    assert "tail protection (tolerance 2 pt on classes [8, 9])" in capsys.readouterr().out
    cal = json.loads((d / "calibration.json").read_text())
    pro = cal["tail_protection"]
    assert pro["protected_classes"] == [8, 9] and pro["protected"] == "named classes"
    assert cal["chosen"]["protected_accuracy"] >= pro["reference"] - 0.02 - 1e-6
    assert cal["chosen"]["flops_ratio"] >= pro["plain_chosen"]["flops_ratio"]
    ok = [
        p
        for p in cal["curve"]
        if p["balanced_accuracy"] >= cal["best"]["balanced_accuracy"] - 0.05 - 1e-6
    ]
    assert max(p["protected_accuracy"] for p in ok) == pytest.approx(pro["reference"], abs=1e-6)
    m = load_manifest(d)
    assert m.calibration is not None and m.calibration.tail_tolerance == 0.02
    assert m.calibration.protected_classes == [8, 9]
    assert m.thresholds == pytest.approx(cal["chosen"]["thresholds"])
    assert m.calibration.test_plain_chosen is not None
    assert m.calibration.test_plain_chosen.thresholds == pro["plain_chosen"]["thresholds"]
    # The model summary shows what the manifest says.
    with TestClient(create_app(make_settings(d))) as client:
        detail = client.get(f"/v1/models/{m.name}").json()
    assert detail["calibration"]["tail_tolerance"] == 0.02
    assert detail["calibration"]["protected_classes"] == [8, 9]
    assert detail["calibration_curve"]["tail_protection"]["reference"] == pro["reference"]
    # Plain recalibration drops the protection again.
    assert main(args) == 0
    plain = load_manifest(d).calibration
    assert plain is not None and plain.tail_tolerance is None and plain.plain_chosen is None
