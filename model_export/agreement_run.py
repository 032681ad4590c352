"""Measure expected agreement (elf_core/agreement.py) for a model directory and write it.

    python -m model_export.agreement_run --model-dir models/fashion-mnist-lt

Rebuilds the validation split from what the directory records (model_export.splits, as
`elf-export calibrate` does), runs the stage graphs in ONNX Runtime over it and writes
agreement.json for the manifest's thresholds. Export, retrofit and recalibration call
`measure_agreement` themselves.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from elf_core.agreement import Agreement, exit_agreement, write_agreement
from elf_core.manifest import load_manifest
from model_export.calibrate_run import SplitProbs, validation_probs
from model_export.runtime import providers_for
from model_export.splits import model_splits
from training.data import DataSplits

log = logging.getLogger(__name__)


def add_agreement(
    model_dir: Path, device: str = "cpu", batch_size: int = 256, progress: bool = False
) -> Agreement:
    """For an existing directory: rebuild the validation split from what it records."""
    splits = model_splits(model_dir, load_manifest(model_dir))
    return measure_agreement(model_dir, splits, device, batch_size, progress)


def measure_agreement(
    model_dir: Path,
    splits: DataSplits,
    device: str,
    batch_size: int,
    progress: bool,
    *,
    val: SplitProbs | None = None,
) -> Agreement:
    """Run the directory's stage graphs over splits.val at its manifest's thresholds (val: their
    validation_probs, when the caller has them already)."""
    manifest = load_manifest(model_dir)
    if val is None:
        stage_paths = [model_dir / s.file for s in manifest.stages]
        val = validation_probs(stage_paths, splits, providers_for(device), batch_size=batch_size,
                               progress=progress, desc="agreement")  # fmt: skip
    probs, labels = val
    agreement = Agreement(
        split="validation",
        images=int(labels.size),
        thresholds=list(manifest.thresholds),
        exits=exit_agreement(probs, manifest.thresholds),
    )
    path = write_agreement(agreement, model_dir)
    for e in agreement.exits:
        log.info("exit %d: %d of %d agree with the final exit", e.exit, e.agree, e.exited)
    log.info("wrote %s", path)
    return agreement


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model_export.agreement_run", description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    add_agreement(a.model_dir, a.device, a.batch_size, progress=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
