"""The data splits a model directory was calibrated on, rebuilt from what the directory records.

A trained export records its training config (config.json), a retrofit its resolved data config
(retrofit.json, key "data"). Either way the images are normalized with the manifest's
preprocessing, the statistics its graphs expect, so recalibration and agreement see the images
that calibration saw.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from elf_core.manifest import Manifest
from training.checkpoint import load_train_config
from training.config import from_dict
from training.data import DataConfig, DataSplits, build_splits

CONFIG_FILE = "config.json"  # a trained export: the checkpoint's training config
RETROFIT_FILE = "retrofit.json"  # a retrofit: what was cut where, the heads, the data config


def recorded_data_config(model_dir: Path) -> DataConfig:
    config = model_dir / CONFIG_FILE
    if config.is_file():
        return load_train_config(json.loads(config.read_text(encoding="utf-8"))).data
    record = model_dir / RETROFIT_FILE
    if record.is_file():
        data = json.loads(record.read_text(encoding="utf-8")).get("data")
        if not isinstance(data, dict):
            raise ValueError(f"{record}: no data config (key 'data'); cannot rebuild the splits")
        return from_dict(DataConfig, data)
    raise FileNotFoundError(
        f"{config}: missing; needed to rebuild the validation split (a retrofitted directory "
        f"records its data in {RETROFIT_FILE}, also missing)"
    )


def model_splits(model_dir: Path, manifest: Manifest) -> DataSplits:
    """The directory's splits, normalized as its manifest says."""
    splits = build_splits(recorded_data_config(model_dir))
    pre = manifest.preprocessing
    return dataclasses.replace(splits, mean=tuple(pre.mean), std=tuple(pre.std))
