"""elf-export and `elf-export calibrate`: every user mistake, each model-directory fault among them,
ends in one line `<prog>: error: ...` and a non-zero exit. Real CLI processes; the model
directories are copies of the bundled model with one fault each."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_errors import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "fashion-mnist-lt"
EXPORT, CALIBRATE = "elf-export", "elf-export calibrate"


def _edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(model_dir: Path) -> None:
        path = model_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return edit


def _set_threshold(m: dict) -> None:
    m["exits"][0]["threshold"] = 1.5


def _drop_exit(m: dict) -> None:
    m["exits"] = m["exits"][:-1]


def _data_root_gone(model_dir: Path) -> None:
    path = model_dir / "retrofit.json"  # the bundled model is a retrofit: its data config
    record = json.loads(path.read_text())
    record["data"]["root"] = str(model_dir / "gone")
    path.write_text(json.dumps(record))


FAULTS: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "sha256": (
        lambda d: (d / "stage_1.onnx").write_bytes(b"replaced"),
        ["stage_1.onnx: sha256 mismatch", "corrupted or was replaced after export"],
    ),
    "missing-stage": (
        lambda d: (d / "stage_2.onnx").unlink(),
        ["stage_2.onnx: missing (named in manifest.json)"],
    ),
    "bad-json": (
        lambda d: (d / "manifest.json").write_text("{not json"),
        ["manifest.json: not valid JSON"],
    ),
    "threshold-1.5": (
        _edit_manifest(_set_threshold),
        ["invalid manifest: exits.0.threshold: Input should be less than or equal to 1 (got 1.5)"],
    ),
    "exits-vs-stages": (
        _edit_manifest(_drop_exit),
        ["invalid manifest: manifest: Value error, there must be exactly one exit per stage"],
    ),
    "no-manifest": (
        lambda d: (d / "manifest.json").unlink(),
        ["manifest.json: missing; a model directory needs a manifest.json"],
    ),
    "no-config": (
        lambda d: (d / "retrofit.json").unlink(),
        ["config.json: missing; needed to rebuild the validation split", "retrofit.json, also"],
    ),
    "data-gone": (_data_root_gone, ["gone does not exist"]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_calibrate_model_dir_faults(tmp_path: Path, fault: str) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(BUNDLED, model_dir)
    make_fault, fragments = FAULTS[fault]
    make_fault(model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    proc = run_cli("model_export.cli", "calibrate", "--model-dir", str(model_dir))
    assert_one_line_error(proc, CALIBRATE, *fragments, code=1)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # nothing written


@pytest.mark.parametrize(
    ("args", "prog", "fragment"),
    [
        (["calibrate"], CALIBRATE, "the following arguments are required: --model-dir"),
        (["calibrate", "--model-dir", "m", "--batch-size", "0"], CALIBRATE, "must be >= 1, got 0"),
        (["calibrate", "--model-dir", "m", "--tolerance", "2"], CALIBRATE, "must be in [0, 1]"),
        (["--out", "m"], EXPORT, "the following arguments are required: --checkpoint"),
        (["--checkpoint", "c.pt", "--out", "m", "--name", "a b"], EXPORT, "argument --name"),
        (["--checkpoint", "c.pt", "--out", "m", "--log-level", "x"], EXPORT, "invalid choice"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], prog: str, fragment: str) -> None:
    proc = run_cli("model_export.cli", *args, cwd=tmp_path)
    assert_one_line_error(proc, prog, fragment, f"(see {prog} --help)", code=2)


def test_checkpoint_faults_and_debug_traceback(tmp_path: Path) -> None:
    out = str(tmp_path / "m")
    proc = run_cli("model_export.cli", "--checkpoint", str(tmp_path / "none.pt"), "--out", out)
    assert_one_line_error(proc, EXPORT, f"no checkpoint at {tmp_path / 'none.pt'}", code=1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    args = ["--checkpoint", str(bad), "--out", out]
    line = assert_one_line_error(run_cli("model_export.cli", *args), EXPORT, code=1)
    assert f"{bad}: not a readable training checkpoint" in line
    debug = run_cli("model_export.cli", *args, "--log-level", "debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == line
    assert not (tmp_path / "m").exists()
