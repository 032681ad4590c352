"""elf-export retrofit on CNN classifiers built here (not the project's networks), exported with
torch's ONNX exporter, on generated separable data: parity, heads above chance, served."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from elf_core.agreement import load_agreement
from elf_core.manifest import load_manifest
from model_export.cli import main
from model_export.onnx_flops import count_onnx_flops
from model_export.retrofit.cuts import (
    Cut,
    RetrofitError,
    auto_cuts,
    block_ends,
    choose_cuts,
    load_classifier,
    spread,
)
from model_export.runtime import StageChain, normalize
from tests.model_export.retrofit_nets import (
    PlainCNN,
    TwoOutputs,
    export,
    make_data,
    non_separating_tensor,
)
from tests.server.images import encode
from tests.server.live import live_server
from training.data import DataConfig, build_splits

DATA_ARGS = ["--n-max", "40", "--imbalance-ratio", "4", "--val-per-class", "8"]
MEAN, STD = 0.27, 0.2  # given as flags: the manifest must record them, not the data's
TAIL_TOLERANCE = 0.02  # tail protection, as for a trained model
VAL_IMAGES = 10 * 8  # --val-per-class 8


@dataclass(frozen=True)
class Retrofitted:
    onnx: Path
    data: Path
    model_dir: Path
    stdout: str


def _run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def retrofitted(tmp_path_factory: pytest.TempPathFactory) -> Retrofitted:
    base = tmp_path_factory.mktemp("retrofit")
    onnx_path = export(PlainCNN(), base / "plain.onnx")
    data = make_data(base / "data")
    out = base / "models" / "plain-exits"
    rc, stdout = _run(
        ["retrofit", "--onnx", str(onnx_path), "--data-root", str(data), *DATA_ARGS,
         "--out", str(out), "--epochs", "25", "--head-batch-size", "32", "--threads", "1",
         "--image-size", "28", "--exits", "2",
         "--mean", str(MEAN), "--std", str(STD), "--tail-tolerance", str(TAIL_TOLERANCE),
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    return Retrofitted(onnx_path, data, out, stdout)


def _test_split(r: Retrofitted) -> tuple[np.ndarray, np.ndarray]:
    splits = build_splits(DataConfig(root=r.data, n_max=40, imbalance_ratio=4, val_per_class=8))
    x = normalize(splits.test.batch(torch.arange(len(splits.test))).numpy(), [MEAN], [STD])
    return x, splits.test.labels.numpy()


def test_chained_stages_reproduce_the_original(retrofitted: Retrofitted) -> None:
    m = load_manifest(retrofitted.model_dir)
    x, _ = _test_split(retrofitted)
    staged = StageChain([retrofitted.model_dir / s.file for s in m.stages])(x)
    original = ort.InferenceSession(str(retrofitted.onnx)).run(None, {"image": x})[0]
    assert len(staged) == len(m.stages) == 3  # two stage ends found, two early exits
    assert np.abs(staged[-1] - original).max() <= 1e-5
    assert "chained stages vs the original" in retrofitted.stdout


def test_every_exit_beats_chance(retrofitted: Retrofitted) -> None:
    m = load_manifest(retrofitted.model_dir)
    x, y = _test_split(retrofitted)
    logits = StageChain([retrofitted.model_dir / s.file for s in m.stages])(x)
    # The backbone is random (untrained): only its early exits were trained, on 10 classes.
    accuracy = [float((z.argmax(1) == y).mean()) for z in logits[:-1]]
    assert min(accuracy) > 0.4, accuracy


def test_manifest_records_flops_and_preprocessing(retrofitted: Retrofitted) -> None:
    m = load_manifest(retrofitted.model_dir)
    assert m.flops_full == count_onnx_flops(retrofitted.onnx)
    # full.onnx (what exit=final serves) is the user's classifier: the backbone alone.
    assert m.full_model is not None
    full = retrofitted.model_dir / m.full_model.file
    assert count_onnx_flops(full) == m.flops_full
    assert [o.name for o in ort.InferenceSession(str(full)).get_outputs()] == ["logits"]
    assert m.preprocessing.mean == [MEAN] and m.preprocessing.std == [STD]
    assert (m.preprocessing.channels, m.preprocessing.height) == (1, 28)
    for k, s in enumerate(m.stages[:-1]):
        # head FLOPs counted on the exported head: the stage graph minus its original segment
        assert s.flops_exit > 0
        assert count_onnx_flops(retrofitted.model_dir / s.file) == s.flops_body + s.flops_exit
        # an image leaving at exit k ran stage bodies and exit heads 0..k
        ran = m.stages[: k + 1]
        assert m.exits[k].cumulative_flops == sum(t.flops_body + t.flops_exit for t in ran)
    assert m.provenance.method.startswith("retrofit")
    assert m.calibration is not None and m.calibration.test is not None


def test_retrofitted_directory_has_agreement_and_tail_protection(retrofitted: Retrofitted) -> None:
    d = retrofitted.model_dir
    m = load_manifest(d)
    agreement = load_agreement(d)  # the audit's expected agreement, as for a trained model
    assert agreement is not None and agreement.split == "validation"
    assert agreement.images == VAL_IMAGES and agreement.thresholds == m.thresholds
    assert [e.exit for e in agreement.exits] == list(range(len(m.stages) - 1))
    assert m.calibration is not None and m.calibration.tail_tolerance == TAIL_TOLERANCE
    curve = json.loads((d / "calibration.json").read_text(encoding="utf-8"))
    assert curve["tail_protection"]["tail_tolerance"] == TAIL_TOLERANCE
    assert curve["tail_protection"]["protected"] == "tail third"


def test_calibrate_works_on_a_retrofitted_directory(
    retrofitted: Retrofitted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Path(shutil.copytree(retrofitted.model_dir, tmp_path / "m"))
    before = load_manifest(d)
    rc, stdout = _run(["calibrate", "--model-dir", str(d), "--tolerance", "1.0", "--no-progress"])
    assert rc == 0 and "recalibrated plain-exits" in stdout
    after = load_manifest(d)  # still loads, every sha256 still matches
    assert after.calibration is not None and after.calibration.tolerance == 1.0
    assert after.calibration.tail_tolerance is None  # plain calibration this time
    # Any accuracy is allowed: the cheapest point sends everything out at the first exit.
    assert after.calibration.chosen.exit_rates[0] == pytest.approx(1.0)
    assert after.stages == before.stages and after.thresholds != before.thresholds
    # The same validation split as the retrofit's, normalized with the manifest's statistics.
    assert before.calibration is not None
    old, new = before.calibration.final_exit_only, after.calibration.final_exit_only
    assert old is not None and new is not None
    assert (new.balanced_accuracy, new.accuracy) == (old.balanced_accuracy, old.accuracy)
    agreement = load_agreement(d)  # rewritten for the new thresholds
    assert agreement is not None and agreement.thresholds == after.thresholds


def test_stage_graphs_import_each_opset_domain_once(retrofitted: Retrofitted) -> None:
    for stage in load_manifest(retrofitted.model_dir).stages:
        graph = onnx.load(str(retrofitted.model_dir / stage.file))
        domains = [o.domain for o in graph.opset_import]
        assert len(domains) == len(set(domains)), stage.file


def test_a_retrofitted_directory_quantizes(retrofitted: Retrofitted, tmp_path: Path) -> None:
    out = tmp_path / "plain-exits-int8"
    rc, stdout = _run(
        ["quantize", "--model-dir", str(retrofitted.model_dir), "--out", str(out),
         "--calibration-images", "32", "--min-agreement", "0.5", "--no-progress"]
    )  # fmt: skip
    assert rc == 0, stdout
    m = load_manifest(out)  # every sha256 matches
    q = m.provenance.quantization
    assert len(m.stages) == 3 and q is not None and q.precision == "int8-u8"


def test_server_loads_and_answers(retrofitted: Retrofitted, tmp_path: Path) -> None:
    m = load_manifest(retrofitted.model_dir)
    x, _ = _test_split(retrofitted)
    pixels = np.clip((x[0, 0] * STD + MEAN) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    png = encode(Image.fromarray(pixels, mode="L"))
    with live_server(retrofitted.model_dir, tmp_path / "serve.log") as server:
        r = httpx.post(
            f"{server.url}/v1/classify", content=png, headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 200, server.logs()
        (pred,) = r.json()["results"]
        logits = StageChain([retrofitted.model_dir / s.file for s in m.stages])(x[:1])
        k = pred["exit"]["index"]
        assert pred["class_index"] == int(logits[k].argmax())
        assert pred["flops"]["executed"] == m.exits[k].cumulative_flops


@pytest.fixture(scope="module")
def data_dir(retrofitted: Retrofitted) -> Path:
    return retrofitted.data


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    # Only log records may precede it (a handler another test left on a closed stream can add
    # "--- Logging error ---" noise); the program's own report is one line, the last.
    ours = [line for line in err if line.startswith("elf-export")]
    assert len(ours) == 1 and err[-1] == ours[0], err
    assert ours[0].startswith("elf-export retrofit: error: ")
    return ours[0]


@pytest.fixture(scope="module")
def plain_onnx(retrofitted: Retrofitted) -> Path:
    return retrofitted.onnx


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        ("no_such_tensor", "does not exist in the graph"),
        ("scores", "is after the last layer"),
        ("image", "is the model's input"),
        ("RESIDUAL", "does not separate the graph"),
    ],
)
def test_bad_cuts_are_one_line(  # noqa: PLR0917
    cut: str,
    message: str,
    plain_onnx: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if cut == "RESIDUAL":
        cut = non_separating_tensor(plain_onnx)
    out = tmp_path / "m"
    argv = ["retrofit", "--onnx", str(plain_onnx), "--data-root", str(data_dir)]
    line = _error([*argv, *DATA_ARGS, "--cuts", cut, "--out", str(out)], capsys)
    assert message in line and repr(cut) in line
    assert not out.exists()


def test_not_a_classifier_is_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = export(TwoOutputs(), tmp_path / "two.onnx")
    argv = ["retrofit", "--onnx", str(onnx_path), "--data-root", str(data_dir), *DATA_ARGS]
    line = _error([*argv, "--out", str(tmp_path / "m")], capsys)
    assert "not a classifier: needs a single 2-D output" in line


def test_image_size_other_than_the_models_is_one_line(
    plain_onnx: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["retrofit", "--onnx", str(plain_onnx), "--data-root", str(data_dir), *DATA_ARGS]
    line = _error([*argv, "--image-size", "32", "--out", str(tmp_path / "m")], capsys)
    assert "--image-size 32 does not match the model's input" in line


def test_class_count_mismatch_is_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = export(PlainCNN(classes=7), tmp_path / "seven.onnx")
    argv = ["retrofit", "--onnx", str(onnx_path), "--data-root", str(data_dir), *DATA_ARGS]
    line = _error([*argv, "--out", str(tmp_path / "m")], capsys)
    assert "10 classes in the data but seven.onnx outputs 7" in line


def test_automatic_cuts_spread_evenly_in_flops() -> None:
    ends = [Cut(f"t{i}", (8, 8, 8), f) for i, f in enumerate([5, 20, 30, 48, 60, 80, 95])]
    assert [c.tensor for c in spread(ends, 3, 100)] == ["t1", "t3", "t5"]
    assert [c.tensor for c in spread(ends, 1, 100)] == ["t3"]
    # More exits asked for than stage ends: every end, once, in order.
    assert [c.tensor for c in spread(ends[:2], 3, 100)] == ["t0", "t1"]


def test_block_ends_are_the_last_cut_of_each_equal_flops_run() -> None:
    # A residual block's sum and the activation after it have the same FLOPs before them.
    cands = [
        Cut(n, (8, 8, 8), f)
        for n, f in [
            ("add", 10),
            ("relu", 10),
            ("add_1", 20),
            ("relu_1", 20),
            ("relu_2", 30),
            ("pool", 40),
        ]
    ]
    assert [c.tensor for c in block_ends(cands)] == ["relu", "relu_1", "relu_2"]


def test_more_exits_than_stage_ends_cut_inside_the_stages(tmp_path: Path) -> None:
    clf = load_classifier(export(PlainCNN(), tmp_path / "plain.onnx"), None, None)
    at_ends = choose_cuts(clf, None, 2)
    finer = choose_cuts(clf, None, 4)
    assert len(at_ends) == 2 and len(finer) == 4
    flops = [c.cumulative_flops for c in finer]
    assert flops == sorted(set(flops)) and flops[-1] <= 0.95 * clf.total_flops


def test_automatic_cuts_leave_out_the_end_of_the_last_stage() -> None:
    # resnet32-like: stage ends at 34%, 67% and 100% of the FLOPs; an exit at 100% saves nothing.
    ends = [Cut(f"t{i}", (8, 8, 8), f) for i, f in enumerate([34, 67, 100])]
    assert [c.tensor for c in auto_cuts(ends, 3, 100, Path("m.onnx"))] == ["t0", "t1"]
    with pytest.raises(RetrofitError, match=r"m\.onnx: every stage end found lies past 95%"):
        auto_cuts(ends[2:], 3, 100, Path("m.onnx"))
