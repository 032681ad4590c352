"""Run by torchrun in test_distributed: train, then save this rank's weights."""

from __future__ import annotations

import os
import sys

import torch

from training.cli import build_parser, config_from_args
from training.trainer import train


def main() -> None:
    cfg = config_from_args(build_parser().parse_args(sys.argv[1:]))
    model, _ = train(cfg)
    torch.save(model.state_dict(), cfg.out / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()
