"""elf-train end to end on a generated image folder: every output, and what it holds."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.build import provenance
from tests.training.conftest import EVAL_PER_CLASS, TRAIN_COUNTS, tiny_args, write_image_folder
from tests.training.data.writers import make_fashion_dir
from training import cli
from training.checkpoint import load_model, load_train_config
from training.data import build_splits, normalize

ELF_TRAIN = Path(sys.executable).parent / "elf-train"


def test_help_documents_every_option() -> None:
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    text = parser.format_help()
    for flag in ("--method", "--loss", "--tau-train", "--exited-weight", "--elf-warmup-epochs",
                 "--resume", "--device", "--workers", "--schedule", "--seed"):  # fmt: skip
        assert flag in text


def test_bad_arguments_fail_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", "x", "--tau-train", "1.5"])
    assert exc.value.code == 2
    assert "tau_train values must lie in [0, 1]" in capsys.readouterr().err


def test_invocation_is_the_shell_quoted_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.invocation(["--out", "a b", "--seed", "1"]) == "elf-train --out 'a b' --seed 1"
    monkeypatch.setattr(sys, "argv", ["/x/training/cli.py", "--out", "r;m", "--epochs", "3"])
    assert cli.invocation() == "python -m training.cli --out 'r;m' --epochs 3"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/elf-train", "--out", "r"])
    assert cli.invocation() == "elf-train --out r"
    args = cli.build_parser().parse_args(["--out", "r"])
    assert cli.config_from_args(args, "elf-train --out r").command == "elf-train --out r"


def test_tolerance_is_the_calibration_tolerance() -> None:
    """The same flag as elf-export's for the same rule (the calibrated point's tolerance)."""
    args = cli.build_parser().parse_args(["--out", "r", "--tolerance", "0.02"])
    assert cli.config_from_args(args, "elf-train").calibration_tolerance == 0.02
    assert "--calibration-tolerance" not in cli.build_parser().format_help()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tolerance", "2"], "elf-train: error: argument --tolerance: must be in [0, 1]"),
        (["--calibration-tolerance", "0.01"], "--calibration-tolerance is now --tolerance"),
    ],
)
def test_tolerance_arguments_exit_2_with_reason(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["--out", "r", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.integration
def test_one_epoch_writes_every_output(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = tiny_args(image_folder, out, "--epochs", "1", "--method", "multi-exit", "--loss", "ldam")
    proc = subprocess.run(
        [str(ELF_TRAIN), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl", "metrics.json",
                 "predictions.npz", "per_class_accuracy.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "per_class_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = load_train_config(json.loads((out / "config.json").read_text()))
    # The run records how it was started (shell-quoted), in config.json, checkpoint and metrics.
    assert cfg.command == shlex.join(["elf-train", *args])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["command"] == cfg.command and state["config"]["command"] == cfg.command
    assert len(str(state["commit"]).removesuffix("+dirty")) == 40
    assert cfg.model.num_classes == 3 and cfg.model.in_channels == 1
    assert cfg.model.classifier == "cosine"  # auto for LDAM
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["train_images"] == sum(TRAIN_COUNTS)
    assert sum(record["train_exit_rate"]) == pytest.approx(1.0)
    m = json.loads((out / "metrics.json").read_text())
    assert (m["command"], m["commit"]) == (cfg.command, state["commit"])
    assert m["train_class_counts"] == list(TRAIN_COUNTS)
    assert m["groups"]["head"] == [0] and m["groups"]["tail"] == [2]
    assert m["groups"]["few"] == [0, 1, 2]  # every class has < 20 training images
    assert len(m["test"]["exits"]) == 3
    for point in [*m["test"]["fixed_thresholds"].values(), m["test"]["calibrated_chosen"]]:
        cum = np.asarray(m["flops"]["cumulative"], dtype=float)
        expected = float(np.dot(point["exit_rates"], cum))
        assert point["expected_flops"] == pytest.approx(expected)
        assert point["flops_saved"] == pytest.approx(1 - expected / m["flops"]["full"])
    _check_predictions_match_checkpoint(out, m)


def _check_predictions_match_checkpoint(out: Path, metrics: dict) -> None:
    """The saved test probabilities and per-exit accuracies come from the saved network."""
    model, config = load_model(out / "checkpoint.pt")
    cfg = load_train_config(config)
    splits = build_splits(cfg.data)
    x = normalize(splits.test.batch(torch.arange(len(splits.test))), splits.mean, splits.std)
    with torch.no_grad():
        probs = [torch.softmax(z, 1).numpy() for z in model(x)]
    saved = np.load(out / "predictions.npz")
    labels = splits.test.labels.numpy()
    for k, p in enumerate(probs):
        np.testing.assert_allclose(saved[f"test_probs_{k}"], p, atol=1e-5)
        assert metrics["test"]["exits"][k]["top1"] == pytest.approx((p.argmax(1) == labels).mean())


@pytest.mark.integration
def test_train_val_layout_states_its_splits(tmp_path: Path) -> None:
    """ImageNet's layout (train/ + val/): metrics.json and the log say that val/ is the test split
    and that the validation split was carved from train/."""
    root = write_image_folder(tmp_path / "data", splits=("train", "val"))
    out = tmp_path / "run"
    args = tiny_args(root, out, "--epochs", "1")
    proc = subprocess.run(
        [str(ELF_TRAIN), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no test/ folder: the test metrics are computed on val/" in proc.stderr
    splits = json.loads((out / "metrics.json").read_text())["splits"]
    assert splits["val"]["images"] == 3  # 1 per class: a fifth of the smallest class (4), >= 1
    assert splits["val"]["source"].startswith("carved from train/: 1 images per class")
    assert splits["test"]["images"] == 3 * EVAL_PER_CLASS
    assert splits["test"]["source"].startswith("val/ (there is no test/ folder")
    assert splits["train"] == {
        "images": sum(TRAIN_COUNTS) - 3,
        "source": "train/ minus the carved validation images",
    }


def test_class_order_is_recorded_in_config_metrics_and_manifest(tmp_path: Path) -> None:
    root = make_fashion_dir(tmp_path / "fm", per_class_train=12, per_class_test=2)
    order = ["9", "8", "7", "6", "5", "4", "3", "2", "1", "0"]
    args = [
        "--data-root", str(root), "--n-max", "8", "--imbalance-ratio", "4",
        "--val-per-class", "2", "--class-order", *order, "--arch", "resnet8",
        "--width-mult", "0.5", "--epochs", "1", "--batch-size", "8", "--threads", "1",
        "--no-progress", "--out", str(tmp_path / "run"), "--log-level", "WARNING",
    ]  # fmt: skip
    assert cli.main(args) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert config["data"]["class_order"] == list(range(9, -1, -1))
    assert metrics["class_order"] == list(range(9, -1, -1))
    assert metrics["dataset"] == "fashion-mnist-lt-r4-order9.8.7.6.5.4.3.2.1.0"
    splits = build_splits(load_train_config(config).data)
    assert splits.train_class_counts[0] == 2 and splits.train_class_counts[9] == 8
    prov = provenance(
        splits, method="elf", loss="ce", architecture="resnet8", epochs=1, command=None
    )
    assert prov.class_order == list(range(9, -1, -1))
