"""retrofit(): an ONNX classifier + data -> a verified, calibrated model directory with early exits.

Order: load and check the model, build the data splits (the project's loaders), choose the cuts,
compute the cut features once (ONNX Runtime), train the heads (torch), write the stage graphs
into a staging directory, check them (ONNX checker, batch sizes, chained stages vs the original
graph on real images, exported heads vs torch), count FLOPs on the graphs, calibrate on the
validation split, write the manifest, and only then move the directory into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elf_core.flops import cumulative_flops, full_flops
from elf_core.manifest import (
    FileRef,
    Manifest,
    Provenance,
    load_manifest,
    sha256_file,
    write_manifest,
)
from model_export.build import (
    check_destination,
    git_commit,
    move_into_place,
    preprocessing,
    stage_specs,
    staging_dir,
)
from model_export.calibrate_run import run_calibration
from model_export.export import MODEL_NAME_PATTERN
from model_export.report import (
    CalibrationOutcome,
    exit_specs,
    manifest_calibration,
    write_curve,
    write_plot,
)
from model_export.retrofit.assemble import build_stage_graphs
from model_export.retrofit.checks import ParityCheck, check_flops_partition, check_stage_parity
from model_export.retrofit.cuts import Classifier, Cut, RetrofitError, choose_cuts, load_classifier
from model_export.retrofit.features import compute_features
from model_export.retrofit.heads import HeadConfig, train_heads
from model_export.runtime import providers_for
from model_export.verify import check_batch_sizes, check_graph
from training.data import DataConfig, DataSplits, build_splits

log = logging.getLogger(__name__)
RETROFIT_FILE = "retrofit.json"  # what was cut where, the heads' config, the data config


@dataclass(frozen=True)
class RetrofitConfig:
    onnx: Path
    data: DataConfig
    out: Path
    cuts: tuple[str, ...] = ()  # tensor names; empty = automatic
    num_exits: int = 3  # early exits to place automatically (fewer if fewer stage ends exist)
    head: HeadConfig = field(default_factory=HeadConfig)
    channels: int | None = None  # None: the model's input shape
    size: tuple[int, int] | None = None  # (height, width); None: the model's input shape
    mean: tuple[float, ...] | None = None  # None: the training split's statistics
    std: tuple[float, ...] | None = None
    tolerance: float = 0.005
    name: str | None = None
    version: str = "1"
    device: str = "cpu"
    batch_size: int = 256
    parity_images: int = 256
    progress: bool = True
    command: str | None = None


@dataclass(frozen=True)
class RetrofitResult:
    model_dir: Path
    manifest: Manifest
    cuts: list[Cut]
    parity: ParityCheck
    calibration: CalibrationOutcome
    seconds: dict[str, float]  # wall time per phase


def _data_config(cfg: RetrofitConfig, clf: Classifier) -> DataConfig:
    """Folder and list data are decoded at the model's input size and channel count."""
    c, h, w = clf.input_shape
    if cfg.data.dataset not in ("folder", "list"):
        return cfg.data
    if h != w and cfg.data.image_size is None:
        raise RetrofitError(f"{clf.path}: input {h}x{w} is not square; folder data are square")
    return dataclasses.replace(
        cfg.data,
        image_size=cfg.data.image_size or h,
        channels=cfg.data.channels or c,
    )


def load_data(cfg: RetrofitConfig, clf: Classifier) -> DataSplits:
    """The splits, checked against the model, with the preprocessing the model expects."""
    splits = build_splits(_data_config(cfg, clf))
    shape = (splits.channels, splits.height, splits.width)
    if shape != clf.input_shape:
        raise RetrofitError(
            f"{splits.name}: images are {shape} (C, H, W) but {clf.path.name} takes "
            f"{clf.input_shape}"
        )
    if splits.num_classes != clf.num_classes:
        raise RetrofitError(
            f"{splits.name}: {splits.num_classes} classes in the data but {clf.path.name} "
            f"outputs {clf.num_classes}"
        )
    mean = cfg.mean if cfg.mean is not None else splits.mean
    std = cfg.std if cfg.std is not None else splits.std
    for label, values in (("mean", mean), ("std", std)):
        if len(values) != splits.channels:
            raise RetrofitError(f"--{label} needs {splits.channels} values, got {list(values)}")
    if any(s <= 0 for s in std):
        raise RetrofitError(f"--std values must be positive, got {list(std)}")
    return dataclasses.replace(splits, mean=tuple(mean), std=tuple(std))


def _check_config(cfg: RetrofitConfig) -> str:
    name = cfg.name or cfg.out.resolve().name
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise RetrofitError(f"model name {name!r}: letters, digits, '.', '_', '-' only")
    if not 0.0 <= cfg.tolerance <= 1.0:
        raise RetrofitError(f"tolerance must be in [0, 1], got {cfg.tolerance}")
    if cfg.num_exits < 1:
        raise RetrofitError(f"--exits must be >= 1, got {cfg.num_exits}")
    check_destination(cfg.out.resolve())
    return name


def retrofit(cfg: RetrofitConfig) -> RetrofitResult:
    name = _check_config(cfg)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    clf = load_classifier(cfg.onnx, cfg.channels, cfg.size)
    splits = load_data(cfg, clf)
    cuts = choose_cuts(clf, cfg.cuts, cfg.num_exits)
    providers = providers_for(cfg.device)
    kw = {"providers": providers, "batch_size": cfg.batch_size, "progress": cfg.progress}
    train = compute_features(clf, cuts, splits.train, splits.mean, splits.std, desc="train", **kw)  # type: ignore[arg-type]
    seconds["features"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    heads = train_heads(
        [c.shape for c in cuts], clf.num_classes, train, splits.train_class_counts, cfg.head,
        progress=cfg.progress,
    )  # fmt: skip
    del train
    seconds["heads"] = time.perf_counter() - t1
    out = cfg.out.resolve()
    tmp = staging_dir(out)
    try:
        t2 = time.perf_counter()
        graphs = build_stage_graphs(clf, cuts, heads, tmp)
        paths = [tmp / g.file for g in graphs.stages]
        specs = [check_graph(p) for p in paths]
        check_graph(tmp / graphs.full.file)
        check_batch_sizes(paths, tmp / graphs.full.file, clf.input_shape, clf.num_classes)
        parity = check_stage_parity(clf, paths, heads, splits, cfg.parity_images)
        check_flops_partition(clf, graphs.per_stage)
        seconds["graphs"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        outcome = run_calibration(
            paths,
            splits,
            cumulative_flops(graphs.per_stage),
            full_flops(graphs.per_stage),
            cfg.tolerance,
            providers=providers,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
        seconds["calibration"] = time.perf_counter() - t3
        write_curve(outcome, tmp)
        write_plot(outcome, tmp, name)
        _write_record(tmp, cfg, clf, cuts, seconds)
        manifest = Manifest(
            name=name,
            version=cfg.version,
            class_names=list(splits.class_names),
            preprocessing=preprocessing(splits),
            stages=stage_specs(tmp, [g.file for g in graphs.stages], specs, graphs.per_stage),
            exits=exit_specs(outcome.val.chosen.thresholds, outcome.cumulative_flops),
            full_model=FileRef(file=graphs.full.file, sha256=sha256_file(tmp / graphs.full.file)),
            flops_full=outcome.flops_full,
            calibration=manifest_calibration(outcome),
            provenance=_provenance(cfg, clf, splits),
        )
        write_manifest(manifest, tmp)
        load_manifest(tmp)  # validates and checks every sha256 as the server will
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds["total"] = time.perf_counter() - t0
    log.info("model directory written: %s", out)
    return RetrofitResult(out, manifest, cuts, parity, outcome, seconds)


def _provenance(cfg: RetrofitConfig, clf: Classifier, splits: DataSplits) -> Provenance:
    import datetime as dt  # noqa: PLC0415

    h = cfg.head
    loss = "balanced_softmax" + (
        f" + {h.distill:g} x distillation (T={h.temperature:g})" if h.distill else ""
    )
    return Provenance(
        dataset=splits.name,
        method=f"retrofit: exit heads on the frozen {clf.path.name}",
        loss=loss,
        epochs=h.epochs,
        architecture=f"onnx:{clf.path.name}",
        commit=git_commit(),
        command=cfg.command,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def _write_record(
    model_dir: Path,
    cfg: RetrofitConfig,
    clf: Classifier,
    cuts: Sequence[Cut],
    seconds: dict[str, float],
) -> None:
    record = {
        "onnx": str(cfg.onnx),
        "input": clf.input_name,
        "output": clf.output_name,
        "flops_original": clf.total_flops,
        "cuts": [dataclasses.asdict(c) for c in cuts],
        "head": dataclasses.asdict(cfg.head),
        "data": json.loads(json.dumps(dataclasses.asdict(cfg.data), default=str)),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "command": cfg.command,
    }
    (model_dir / RETROFIT_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
