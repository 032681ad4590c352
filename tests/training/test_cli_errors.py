"""elf-train: every user mistake ends in one line `elf-train: error: ...` and a non-zero exit;
the traceback only under --log-level debug. Real CLI processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_errors import assert_one_line_error, run_cli
from tests.training.conftest import tiny_args, write_image_folder

PROG = "elf-train"


def _train(*args: str) -> str:
    return assert_one_line_error(run_cli("training.cli", *args), PROG)


@pytest.mark.parametrize(
    ("args", "fragments", "code"),
    [
        (["--epochs", "0"], ["epochs, batch_size and eval_batch_size must be >= 1"], 2),
        (["--tau-train", "1.5"], ["tau_train values must lie in [0, 1]"], 2),
        (
            ["--method", "elf", "--loss", "ldam"],
            ["--method elf with --loss ldam is refused", "the final exit collapses"],
            2,
        ),
        (["--log-level", "loud"], ["argument --log-level: invalid choice: 'loud'"], 2),
        (["--dataset", "folder"], ["folder data needs --data-root"], 1),
        (["--dataset", "cifar10-lt"], ["cifar10-lt needs --data-root"], 1),
        (["--dataset", "list", "--data-root", "."], ["needs --train-list, --val-list"], 1),
        ([], ["the following arguments are required: --out"], 2),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], fragments: list[str], code: int) -> None:
    out = [] if not args else ["--out", str(tmp_path / "run")]
    proc = run_cli("training.cli", *out, *args)
    assert_one_line_error(proc, PROG, *fragments, code=code)
    assert not (tmp_path / "run").exists()


def test_wrong_data_root(tmp_path: Path) -> None:
    line = _train("--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "nope"))
    assert f"Fashion-MNIST directory {tmp_path / 'nope'} does not exist" in line
    assert "apt-get install dataset-fashion-mnist" in line
    line = _train(*tiny_args(tmp_path / "nope", tmp_path / "run"))
    assert f"--data-root {tmp_path / 'nope'} is not a directory" in line


def test_missing_splits(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", splits=("train",))
    line = _train(*tiny_args(root, tmp_path / "run"))
    assert "has train/ but neither val/ nor test/; add a held-out test/" in line
    line = _train(*tiny_args(root / "train", tmp_path / "run"))
    assert "train does not exist; an image folder needs train/ and val/ or test/" in line
    (root / "test" / "zebra").mkdir(parents=True)
    line = _train(*tiny_args(root, tmp_path / "run"))
    assert "class 'zebra' has no folder in" in line


def test_corrupt_checkpoint_on_resume_and_debug_traceback(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", splits=("train", "test"))
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    args = [*tiny_args(root, out, "--resume")]
    line = _train(*args)
    assert f"{out / 'checkpoint.pt'}: not a readable training checkpoint" in line
    # --log-level debug: the same line last, after the traceback
    debug = run_cli("training.cli", *args[:-3], "--log-level", "debug", "--resume")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == line
