"""The checks an export must pass, each shown to fail on a broken input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from elf_core.manifest import load_manifest
from model_export import graphs as graphs_mod
from model_export.build import check_destination
from model_export.cli import main
from model_export.graphs import export_graph
from model_export.onnx_flops import count_onnx_flops
from model_export.verify import (
    VerificationError,
    check_flops,
    check_full_graph,
    check_graph,
    check_parity,
)
from tests.model_export.conftest import Exported
from training.checkpoint import load_model
from training.flops import count_flops
from training.networks import ExitHead


class ConvLinear(nn.Module):
    """conv 1->2 3x3 (pad 1) on 4x4, then flatten and linear 32->5: FLOPs known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_onnx_flop_count_matches_hand_count(tmp_path: Path) -> None:
    # conv: 4*4*2 outputs x 1*3*3 MACs = 288; linear: 5 x 32 = 160; FLOPs = 2 x 448.
    mod = ConvLinear().eval()
    export_graph(mod, (1, 4, 4), tmp_path / "m.onnx", ["logits"])
    assert count_onnx_flops(tmp_path / "m.onnx") == 896
    assert count_flops(mod, torch.zeros(1, 1, 4, 4)) == 896


def test_onnx_flops_cross_check_of_the_export(exported: Exported) -> None:
    net, _ = load_model(exported.checkpoint)
    d = exported.model_dir
    stages = [d / f"stage_{k}.onnx" for k in range(3)]
    rep = check_flops(net, (1, 28, 28), stages, d / "full.onnx")
    assert rep.max_rel_diff <= 0.02
    assert rep.onnx_stage == [b + h for b, h in rep.per_stage]
    # full.onnx is the backbone alone: every body and the final classifier, no auxiliary head.
    backbone = sum(b for b, _ in rep.per_stage) + rep.per_stage[-1][1]
    assert rep.onnx_full == backbone == load_manifest(d).flops_full < sum(rep.onnx_stage)


def test_full_graph_with_several_outputs_is_refused(exported: Exported) -> None:
    d = exported.model_dir
    assert check_full_graph(d / "full.onnx").name == "logits"
    with pytest.raises(VerificationError, match=r"stage_0\.onnx: expected one output .*2:"):
        check_full_graph(d / "stage_0.onnx")  # features and logits


def test_flops_mismatch_is_an_error(exported: Exported) -> None:
    # A network with a wider first stage than the graphs: the counts disagree.
    net, _ = load_model(exported.checkpoint)
    stage0 = net.stages[0]
    assert isinstance(stage0, nn.Sequential)
    stage0.append(nn.Conv2d(4, 4, 3, padding=1))
    d = exported.model_dir
    with pytest.raises(VerificationError, match="FLOPs"):
        check_flops(net, (1, 28, 28), [d / f"stage_{k}.onnx" for k in range(3)], d / "full.onnx")


def test_parity_detects_weights_that_differ_from_the_graphs(exported: Exported) -> None:
    net, _ = load_model(exported.checkpoint)
    d = exported.model_dir
    stages = [d / f"stage_{k}.onnx" for k in range(3)]
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    rep = check_parity(net, stages, d / "full.onnx", x)
    assert rep.max_abs_diff <= 1e-4 and rep.images == 8
    head = net.exits[1]
    assert isinstance(head, ExitHead)
    with torch.no_grad():
        head.fc.weight.add_(0.01)
    with pytest.raises(VerificationError, match=r"\(exit, max abs diff\): \[\(1,"):
        check_parity(net, stages, d / "full.onnx", x)


def test_fixed_batch_axis_is_refused(exported: Exported, tmp_path: Path) -> None:
    g = onnx.load(str(exported.model_dir / "stage_0.onnx"))
    g.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(g, str(tmp_path / "fixed.onnx"))
    with pytest.raises(VerificationError, match=r"fixed\.onnx: input has no symbolic batch axis"):
        check_graph(tmp_path / "fixed.onnx")


def test_failed_verification_leaves_nothing_behind(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kw: object) -> None:
        raise VerificationError("stage_0.onnx: simulated parity failure")

    monkeypatch.setattr(graphs_mod, "check_parity", broken)
    out = tmp_path / "models" / "broken"
    rc = main(["--checkpoint", str(exported.checkpoint), "--out", str(out), "--no-progress"])
    assert rc == 1
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # the staging directory is gone too


def test_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model directory"):
        check_destination(tmp_path / "notes")
    check_destination(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty")


def test_recalibrate_rewrites_thresholds_and_manifest(
    exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Path(shutil.copytree(exported.model_dir, tmp_path / "m"))
    before = load_manifest(d)
    assert main(["calibrate", "--model-dir", str(d), "--tolerance", "1.0", "--no-progress"]) == 0
    after = load_manifest(d)  # still loads, every sha256 still matches
    assert after.calibration is not None and before.calibration is not None
    assert after.calibration.tolerance == 1.0
    # Any accuracy is allowed: the cheapest point sends everything out at the first exit.
    assert after.calibration.chosen.exit_rates[0] == pytest.approx(1.0)
    assert after.calibration.chosen.flops_ratio <= before.calibration.chosen.flops_ratio
    assert after.stages == before.stages and after.flops_full == before.flops_full
    assert "recalibrated tiny-lt" in capsys.readouterr().out
