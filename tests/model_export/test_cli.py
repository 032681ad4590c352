"""CLI argument checks that fail before any slow work."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a b"], "argument --name"),
        (["--tolerance", "5"], "argument --tolerance: must be in [0, 1]"),
        (["--device", "tpu"], "argument --device"),
    ],
)
def test_bad_arguments_exit_2_with_reason(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m")])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"elf-export: error: no checkpoint at {tmp_path / 'none.pt'}" in err
    assert not (tmp_path / "m").exists()


def test_calibrate_needs_a_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--model-dir", str(tmp_path / "absent")]) == 1
    assert "model directory does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protect-classes", "7,8"], "--protect-classes needs --tail-tolerance"),
        (["--tail-tolerance", "0.01", "--protect-classes", "a,b"], "class indices separated"),
        (["--tail-tolerance", "0.01", "--protect-classes", "-1"], "must be >= 0"),
        (["--tail-tolerance", "3"], "must be in [0, 1]"),
    ],
)
def test_tail_protection_arguments_exit_2_with_reason(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--model-dir", str(tmp_path), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # One flag name per concept: retrofit's input size is elf-train's --image-size, and
        # --log-level debug is the one spelling of verbose in every command.
        (["retrofit", "--size", "224"], "elf-export retrofit: error: --size is now --image-size"),
        (["calibrate", "-v"], "elf-export calibrate: error: unrecognized arguments: -v"),
        (["retrofit", "--name", "a b"], "elf-export retrofit: error: argument --name: 'a b'"),
        (["quantize", "--name", "a b"], "elf-export quantize: error: argument --name: 'a b'"),
        (["quantize", "--min-agreement", "2"], "argument --min-agreement: must be in [0, 1]"),
    ],
)
def test_subcommand_arguments_exit_2_with_reason(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "m")]
    required = {
        "retrofit": ["--onnx", "m.onnx", *out],
        "calibrate": ["--model-dir", str(tmp_path)],
        "quantize": ["--model-dir", str(tmp_path), *out],
    }[args[0]]
    with pytest.raises(SystemExit) as exc:
        main([args[0], *required, *args[1:]])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
