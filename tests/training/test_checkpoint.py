"""Checkpoints: a round trip through weights_only loading, and resume equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_args
from training import cli, trainer
from training.checkpoint import load_checkpoint, load_model, load_train_config, save_checkpoint
from training.config import TrainConfig, to_dict
from training.losses import LossConfig
from training.networks import ModelConfig, build_model


def test_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(
        out=tmp_path,
        model=ModelConfig(arch="resnet8", num_classes=4, width_mult=0.5),
        loss=LossConfig(tau_train=(0.8, 0.95), exit_weights=(1.0, 1.0, 2.0)),
    )
    model = build_model(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    x = torch.randn(3, 1, 12, 12)
    sum(z.sum() for z in model(x)).backward()
    opt.step()
    sched.step()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, opt, sched, 3, cfg, {"note": "x", "counts": [4, 2]})
    state = load_checkpoint(path)  # weights_only=True inside
    assert state["epoch"] == 3 and state["note"] == "x" and state["counts"] == [4, 2]
    assert state["config"] == json.loads(json.dumps(to_dict(cfg)))
    assert load_train_config(state["config"]) == cfg
    assert state["optimizer"]["state"], "momentum buffers are saved"
    rebuilt, config = load_model(path)
    assert not rebuilt.training and config["model"]["arch"] == "resnet8"
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(x), rebuilt(x), strict=True):
            torch.testing.assert_close(a, b)


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.integration
def test_resume_matches_an_uninterrupted_run(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--epochs", "2", "--method", "elf", "--eval-thresholds", "0.9"]
    assert cli.main(tiny_args(image_folder, tmp_path / "a", *args)) == 0
    # Run b dies in the second epoch's validation: the checkpoint holds epoch 1.
    calls = {"n": 0}
    validate = trainer._validate

    def dying_validate(run: trainer._Run) -> dict[str, object]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return validate(run)

    monkeypatch.setattr(trainer, "_validate", dying_validate)
    with pytest.raises(KeyboardInterrupt):
        cli.main(tiny_args(image_folder, tmp_path / "b", *args))
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(trainer, "_validate", validate)
    assert cli.main(tiny_args(image_folder, tmp_path / "b", *args, "--resume")) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)
    hist_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    hist_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(hist_a) == len(hist_b) == 2
    assert json.loads(hist_a[1])["train_loss"] == json.loads(hist_b[1])["train_loss"]
