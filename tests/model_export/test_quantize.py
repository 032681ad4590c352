"""elf-export quantize on the tiny exported model: a new int8 directory with float32 interfaces,
thresholds chosen again on validation, provenance recorded, the source untouched, and a real
elf-serve serving it unchanged (answers equal ONNX Runtime's offline ones)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from elf_core.exits import early_exit, softmax
from elf_core.manifest import MANIFEST_FILE, Manifest, load_manifest, sha256_file
from model_export.calibrate_run import split_probs
from model_export.cli import main
from model_export.quantize.pipeline import QuantizeConfig, QuantizeError, quantize_model
from model_export.runtime import StageChain
from model_export.splits import model_splits
from model_export.verify import check_graph
from tests.model_export.conftest import Exported
from tests.server.live import live_server

# The tiny model barely learned (confidences close together), so int8 moves more of its
# final-exit answers than on a trained model: the floor is lowered for it, not switched off.
TINY_FLOOR = "0.8"


def _quantize_cli(src: Path, out: Path, images: int, floor: str) -> int:
    """`elf-export quantize` through its CLI entry point, without progress bars."""
    argv = ["quantize", "--model-dir", str(src), "--out", str(out)]
    return main([*argv, "--calibration-images", str(images), "--min-agreement", floor,
                 "--no-progress"])  # fmt: skip


@pytest.fixture(scope="module")
def quantized(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("quantize") / "tiny-lt-int8"
    before = {p.name: sha256_file(p) for p in exported.model_dir.iterdir()}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = _quantize_cli(exported.model_dir, out, 32, TINY_FLOOR)
    assert rc == 0
    after = {p.name: sha256_file(p) for p in exported.model_dir.iterdir()}
    assert after == before  # the source directory is not written
    return out, buf.getvalue()


def test_stages_are_int8_with_float32_interfaces(
    exported: Exported, quantized: tuple[Path, str]
) -> None:
    out, _ = quantized
    src, dst = load_manifest(exported.model_dir), load_manifest(out)  # sha256 of every file
    assert dst.name == "tiny-lt-int8" and dst.version == src.version
    for s_src, s_dst in zip(src.stages, dst.stages, strict=True):
        assert s_dst.sha256 != s_src.sha256
        assert (s_dst.input, s_dst.features, s_dst.logits) == (
            s_src.input,
            s_src.features,
            s_src.logits,
        )
        model = onnx.load(str(out / s_dst.file))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        elem = [vi.type.tensor_type.elem_type for vi in [*model.graph.input, *model.graph.output]]
        assert set(elem) == {onnx.TensorProto.FLOAT}
        weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert weights  # per-channel int8 weights
    # full.onnx (exit=final's graph, the backbone alone) is int8 too, with its interface kept.
    assert dst.full_model is not None and src.full_model is not None
    assert dst.full_model.sha256 != src.full_model.sha256
    full = onnx.load(str(out / dst.full_model.file))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in full.graph.node}
    assert check_graph(out / dst.full_model.file) == check_graph(
        exported.model_dir / src.full_model.file
    )
    assert [o.name for o in full.graph.output] == ["logits"]
    assert dst.flops_full == src.flops_full


def test_manifest_records_quantization(exported: Exported, quantized: tuple[Path, str]) -> None:
    out, stdout = quantized
    src, dst = load_manifest(exported.model_dir), load_manifest(out)
    q = dst.provenance.quantization
    assert q is not None and src.provenance.quantization is None
    assert q.precision == "int8-u8" and q.calibration_split == "train"
    assert q.calibration_images == 32
    assert q.source == f"{src.name} v{src.version}"
    assert q.source_stage_sha256 == [s.sha256 for s in src.stages]
    assert q.command is not None and q.command.startswith("elf-export quantize --model-dir")
    assert 0.8 <= q.final_agreement <= 1.0 and 0.0 <= q.served_agreement <= 1.0
    assert dst.provenance.command == src.provenance.command  # the training provenance is kept
    assert f"final exit {100 * q.final_agreement:.2f}%" in stdout
    # Thresholds chosen on validation for the int8 stages: the recorded point is reproducible.
    assert dst.calibration is not None and dst.calibration.test is not None
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["thresholds"] == pytest.approx(dst.thresholds)


def test_served_agreement_matches_offline(exported: Exported, quantized: tuple[Path, str]) -> None:
    """The recorded final-exit agreement is what the two directories' graphs give on validation."""
    out, _ = quantized
    src, dst = load_manifest(exported.model_dir), load_manifest(out)
    splits = model_splits(out, dst)
    probs = [
        split_probs(
            StageChain([d / s.file for s in m.stages]),
            splits.val,
            splits,
            batch_size=64,
            desc="",
            progress=False,
        )[0]
        for m, d in ((src, exported.model_dir), (dst, out))
    ]
    final = float(np.mean(probs[0][-1].argmax(1) == probs[1][-1].argmax(1)))
    assert dst.provenance.quantization is not None
    assert dst.provenance.quantization.final_agreement == pytest.approx(final, abs=1e-6)


def test_refuses_existing_out_and_requantizing(
    exported: Exported, quantized: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = quantized
    with pytest.raises(FileExistsError, match="exists"):
        quantize_model(exported.model_dir, QuantizeConfig(out=out, progress=False))
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(out, QuantizeConfig(out=tmp_path / "again", progress=False))
    with pytest.raises(QuantizeError, match="model name"):
        quantize_model(exported.model_dir, QuantizeConfig(out=tmp_path / "a b", progress=False))
    assert list(tmp_path.iterdir()) == []


def test_agreement_floor_fails_and_leaves_nothing(exported: Exported, tmp_path: Path) -> None:
    """A floor of 1.0 with 1 calibration image (ranges from one image: clipped activations)."""
    out = tmp_path / "bad"
    rc = _quantize_cli(exported.model_dir, out, 1, "1.0")
    assert rc != 0
    assert list(tmp_path.iterdir()) == []  # neither DST nor its temporary sibling


@pytest.mark.integration
def test_elf_serve_serves_quantized_dir(quantized: tuple[Path, str], tmp_path: Path) -> None:
    """A real elf-serve on the int8 directory answers as ONNX Runtime does offline with its
    stages and thresholds."""
    out, _ = quantized
    m = load_manifest(out)
    x = np.random.default_rng(1).standard_normal((12, 1, 28, 28)).astype(np.float32)
    probs = [softmax(z) for z in StageChain([out / s.file for s in m.stages])(x)]
    pred, exits = early_exit(probs, m.thresholds)
    (final,) = StageChain([out / "full.onnx"])(x)  # the int8 backbone: what exit=final runs
    with live_server(out, tmp_path / "serve.log") as server:
        got = []
        for row in x:
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "FP32",
                        "data": row.ravel().tolist(),
                    }
                ]
            }
            r = httpx.post(f"{server.url}/v2/models/{m.name}/infer", json=body, timeout=30)
            assert r.status_code == 200, r.text
            o = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
            got.append((o["class_index"], o["exit_index"]))
        batch = {"name": "input", "shape": list(x.shape), "datatype": "FP32",
                 "data": x.ravel().tolist()}  # fmt: skip
        final_body = {"inputs": [batch], "parameters": {"exit": "final"}}
        r = httpx.post(f"{server.url}/v2/models/{m.name}/infer", json=final_body, timeout=30)
        v2 = {o["name"]: o["data"] for o in r.json()["outputs"]}
        detail = httpx.get(f"{server.url}/v1/models/{m.name}", timeout=10).json()
        server.terminate()
    assert got == list(zip(pred.tolist(), exits.tolist(), strict=True))
    assert v2["class_index"] == final.argmax(1).tolist() and v2["exit_index"] == [2] * 12
    assert v2["flops_executed"] == [m.flops_full] * 12
    assert detail["provenance"]["quantization"]["precision"] == "int8-u8"
    assert (out / MANIFEST_FILE).is_file()


def test_manifests_without_quantization_still_load(exported: Exported) -> None:
    """Manifests written before provenance.quantization existed (no key) load as float32."""
    raw = json.loads((exported.model_dir / MANIFEST_FILE).read_text())
    raw["provenance"].pop("quantization", None)
    assert Manifest.model_validate(raw).provenance.quantization is None
    bundled = Path(__file__).resolve().parents[2] / "models" / "fashion-mnist-lt"
    assert json.loads((bundled / MANIFEST_FILE).read_text())["provenance"]["quantization"] is None
    assert load_manifest(bundled).provenance.quantization is None


def test_cli_errors_are_one_line(
    exported: Exported, quantized: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = quantized
    args = ["quantize", "--model-dir", str(exported.model_dir), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"elf-export quantize: error: {out}: exists; elf-export quantize writes a new "
                   "directory"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main([*args, "--precision", "fp16"])
    assert exc.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
