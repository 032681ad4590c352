"""`elf-export calibrate`: new thresholds for an existing model directory, trained or retrofitted.

Same graphs, same validation split (rebuilt from what the directory records, model_export.splits);
rewrites calibration.json/.png, the manifest's thresholds and calibration (in one rename) and
agreement.json for the new thresholds.
"""

from __future__ import annotations

import os
from pathlib import Path

from elf_core.manifest import MANIFEST_FILE, Manifest, load_manifest
from model_export.agreement_run import measure_agreement
from model_export.calibrate_run import SplitProbs, run_calibration, validation_probs
from model_export.report import (
    CalibrationOutcome,
    exit_specs,
    manifest_calibration,
    write_curve,
    write_plot,
)
from model_export.runtime import providers_for
from model_export.splits import model_splits


def recalibrate(
    model_dir: Path,
    tolerance: float,
    device: str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    *,
    tail_tolerance: float | None = None,
    protect_classes: tuple[int, ...] | None = None,
    val: SplitProbs | None = None,
) -> tuple[Manifest, CalibrationOutcome]:
    """With `tail_tolerance`, tail-protected (see elf_core.calibration.calibrate). val: the
    directory's validation_probs, when the caller has them already; the
    threshold search and agreement.json share one pass either way."""
    manifest = load_manifest(model_dir)
    splits = model_splits(model_dir, manifest)
    stage_paths = [model_dir / s.file for s in manifest.stages]
    if val is None:
        val = validation_probs(stage_paths, splits, providers_for(device), batch_size=batch_size,
                               progress=progress)  # fmt: skip
    outcome = run_calibration(
        stage_paths,
        splits,
        [e.cumulative_flops for e in manifest.exits],
        manifest.flops_full,
        tolerance,
        providers=providers_for(device),
        batch_size=batch_size,
        progress=progress,
        tail_tolerance=tail_tolerance,
        protect_classes=protect_classes,
        val=val,
    )
    exits = exit_specs(outcome.val.chosen.thresholds, outcome.cumulative_flops)
    updated = Manifest.model_validate(
        {
            **manifest.model_dump(),
            "exits": [e.model_dump() for e in exits],
            "calibration": manifest_calibration(outcome).model_dump(),
        }
    )
    write_curve(outcome, model_dir)
    write_plot(outcome, model_dir, manifest.name)
    # Replace the manifest in one rename: a reader sees the old one or the new one, never half.
    tmp = model_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(updated.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / MANIFEST_FILE)
    measure_agreement(model_dir, splits, device, batch_size, progress, val=val)  # new thresholds
    return updated, outcome
