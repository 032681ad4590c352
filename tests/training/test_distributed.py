"""DistributedDataParallel: two CPU processes under torchrun (gloo) end with the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TRAIN_COUNTS, tiny_args

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.integration
def test_two_ranks_agree_on_the_weights(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [
        *torchrun,
        str(WORKER),
        *tiny_args(image_folder, out, "--epochs", "2", "--device", "cpu"),
    ]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    params = [k for k in ranks[0] if "running_" not in k and "num_batches" not in k]
    assert len(params) > 10
    for key in params:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
    # Each rank trained on its half: together they saw the whole split once per epoch.
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_images"] == sum(TRAIN_COUNTS) for h in history)
    assert (out / "metrics.json").is_file()
