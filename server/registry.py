"""The models a server holds, by name and version: found under ELF_MODEL_DIR
(server/model_repository.py), loaded through the manifest, warmed up; the registry that requests
read them from, and that a load or unload (server/repository.py) changes one name at a time."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from elf_core.exits import check_thresholds, exit_thresholds
from elf_core.manifest import (
    Agreement,
    Manifest,
    ManifestError,
    load_agreement,
    load_manifest,
)
from server.batching.audit import Auditor
from server.batching.batch_cap import BatchCap, batch_cap
from server.batching.batcher import Batcher
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions
from server.full_model import FullModelPath, load_full_path
from server.load.controller import ControllerThread
from server.metrics import Metrics
from server.model_repository import newest, read_repository, version_key
from server.preprocess import InputError
from server.settings import Settings

log = logging.getLogger(__name__)

ExitMode = Literal["auto", "final"]


class UnknownModelError(LookupError):
    pass


@dataclass
class ServedModel:
    directory: Path
    manifest: Manifest
    runner: OnnxStageRunner
    batcher: Batcher
    curve: Any | None  # calibration.json, as exported
    thresholds: tuple[float, ...]  # current defaults, K values (the last is 0)
    agreement: Agreement | None = None  # agreement.json: expected agreement per exit
    controller: ControllerThread | None = (
        None  # ELF_LATENCY_TARGET_MS (server/load/operating_point.py)
    )
    batch_cap: BatchCap | None = None  # the batcher's cap on rows per batch (ELF_BATCH_CAP)
    fingerprint: str = ""  # of its directory when it was loaded (server/model_repository.py)
    leases: int = 0  # requests that hold it (ModelRegistry.lease): it drains to 0 before it stops
    full: FullModelPath | None = None  # exit=final through full.onnx (server/full_model.py)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    @property
    def providers(self) -> list[str]:
        return self.runner.stages.providers

    @property
    def warnings(self) -> list[str]:
        """What an operator must know about where the model runs (a CPU fallback)."""
        warning = self.runner.stages.warning
        return [warning] if warning else []

    def row_thresholds(self, threshold: float | None, mode: ExitMode) -> np.ndarray:
        """Per-exit thresholds for one request: [K] float64 (the last exit always answers)."""
        k = self.num_exits
        if mode == "final":
            return exit_thresholds([np.inf] * (k - 1), k)
        if threshold is not None:
            return exit_thresholds([threshold] * (k - 1), k)
        return exit_thresholds(self.thresholds, k)

    def start(self) -> None:
        """Start the batchers' workers (the stage chain's and exit=final's)."""
        self.batcher.start()
        if self.full is not None:
            self.full.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the load controller, then answer every admitted row and end the workers."""
        if self.controller is not None:
            self.controller.stop()
        self.batcher.stop(timeout_s)
        if self.full is not None:
            self.full.stop(timeout_s)

    def set_thresholds(self, values: list[float]) -> tuple[float, ...]:
        """Accept K-1 (auxiliary exits) or K values (then the last must be 0); return the old."""
        k = self.num_exits
        try:
            check_thresholds(values, k)
        except ValueError as exc:
            raise InputError(f"{self.name}: {exc}") from None
        new = tuple(float(v) for v in exit_thresholds(values, k))
        with self._lock:
            old, self.thresholds = self.thresholds, new
        return old


Versions = dict[str, ServedModel]  # version -> model, of one name


class ModelRegistry:
    """The models served now: every name's versions, the newest of each, and the requests that
    hold each model. A change replaces one name's versions whole, under the lock: a reader sees
    the versions before or after it, never a mix, and never a model that is not warm."""

    def __init__(self, default: str | None = None) -> None:
        self.default_name = default  # ELF_DEFAULT_MODEL; None: the first name in order
        self._cond = threading.Condition()
        # (name -> versions, name -> newest version's model): replaced whole, never changed.
        self._now: tuple[dict[str, Versions], dict[str, ServedModel]] = ({}, {})

    @property
    def models(self) -> dict[str, ServedModel]:
        """The newest served version of each name."""
        return self._now[1]

    @property
    def default(self) -> str:
        names = sorted(self._now[0])
        return self.default_name or (names[0] if names else "")

    def versions(self, name: str) -> list[str]:
        """The served versions of `name`, oldest first ([] when it is not served)."""
        return sorted(self._now[0].get(name, {}), key=version_key)

    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The model `name` (None: the default) at `version` (None: the newest served)."""
        versions, latest = self._now
        key = self.default if name is None else name
        if key not in latest:
            known = ", ".join(sorted(latest)) or "none"
            raise UnknownModelError(f"unknown model {key!r} (served: {known})")
        if version is None:
            return latest[key]
        try:
            return versions[key][version]
        except KeyError:
            served = ", ".join(self.versions(key))
            raise UnknownModelError(
                f"model {key!r} has no version {version!r} served (served: {served})"
            ) from None

    @contextmanager
    def lease(self, name: str | None, version: str | None = None) -> Iterator[ServedModel]:
        """`get`, holding the model for the request's whole life: a model replaced meanwhile
        stops only after every request that holds it has been answered."""
        with self._cond:
            model = self.get(name, version)
            model.leases += 1
        try:
            yield model
        finally:
            with self._cond:
                model.leases -= 1
                if model.leases == 0:
                    self._cond.notify_all()

    def replace(self, name: str, versions: Versions) -> list[ServedModel]:
        """Serve `versions` of `name` from now on ({}: none); return the models it no longer
        serves (to drain, then stop)."""
        with self._cond:
            now, latest = dict(self._now[0]), dict(self._now[1])
            before = now.pop(name, {})
            latest.pop(name, None)
            if versions:
                now[name] = dict(versions)
                latest[name] = versions[max(versions, key=version_key)]
            self._now = (now, latest)
        kept = {id(m) for m in versions.values()}
        return [m for m in before.values() if id(m) not in kept]

    def drain(self, model: ServedModel, timeout_s: float) -> bool:
        """Wait until no request holds `model` (no new one can once it is replaced)."""
        with self._cond:
            return self._cond.wait_for(lambda: model.leases == 0, timeout_s)

    def all_models(self) -> list[ServedModel]:
        return [m for versions in self._now[0].values() for m in versions.values()]

    def stop(self, timeout_s: float | None = None) -> None:
        for model in self.all_models():
            model.stop(timeout_s)


def load_curve(model_dir: Path, manifest: Manifest) -> Any | None:
    name = manifest.calibration.curve_file if manifest.calibration else "calibration.json"
    if name is None or not (model_dir / name).is_file():
        if manifest.calibration is not None and name is not None:
            log.warning("%s: %s is named in the manifest but missing", model_dir, name)
        return None
    try:
        return json.loads((model_dir / name).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{model_dir / name}: not valid JSON ({exc})") from exc


def load_model(
    model_dir: Path, manifest: Manifest, settings: Settings, metrics: Metrics
) -> ServedModel:
    b = settings.max_batch_size
    runner = OnnxStageRunner(manifest, load_stage_sessions(manifest, model_dir, settings), b)
    runner.warm_up(list(range(1, b + 1)) if settings.warmup_all_batch_sizes else sorted({1, b}))
    pre = manifest.preprocessing
    cap = batch_cap(
        settings.batch_cap,
        runner,
        (pre.channels, pre.height, pre.width),
        max_batch_size=b,
        tolerance=settings.batch_cap_tolerance,
        policy=settings.scheduling,
        model=manifest.name,
    )
    audit = None
    if settings.audit_rate > 0 and runner.num_stages > 1:
        audit = Auditor(
            settings.audit_rate,
            runner.num_stages,
            max_batch_size=cap.size,
            model=manifest.name,
            metrics=metrics,
        )
    batcher = Batcher(
        runner,
        max_batch_size=cap.size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size,
        model=manifest.name,
        version=manifest.version,
        metrics=metrics,
        audit=audit,
        scheduling=settings.scheduling,
    )
    curve = load_curve(model_dir, manifest)
    try:
        agreement = load_agreement(model_dir)
    except ValueError as exc:
        raise ManifestError(str(exc)) from exc
    model = ServedModel(model_dir, manifest, runner, batcher, curve, (), agreement, batch_cap=cap)
    model.full = load_full_path(
        model_dir, manifest, settings, metrics, max_batch_size=cap.size, stage_batcher=batcher
    )
    metrics.batch_cap.labels(model=manifest.name).set(cap.size)
    for e in agreement.exits if agreement is not None else []:
        if e.agreement is not None:
            metrics.audit_expected.labels(model=manifest.name, exit=str(e.exit)).set(e.agreement)
    model.set_thresholds(manifest.thresholds)
    metrics.set_thresholds(manifest.name, model.thresholds)
    providers = ",".join(model.providers)
    metrics.model_info.labels(
        model=manifest.name, version=manifest.version, providers=providers
    ).set(1)
    return model


Found = dict[str, dict[str, tuple[Path, str, Manifest]]]  # name -> version -> (dir, fp, manifest)


def find_manifests(settings: Settings) -> Found:
    """What the server starts with: the newest ELF_MODEL_VERSIONS versions of every model in the
    repository, their manifests checked (files and sha256 too). A directory that cannot be
    served stops the start (ManifestError, naming it)."""
    root = settings.model_dir
    contents = read_repository(root)
    if not contents.names():
        raise ManifestError(f"{root}: no manifest.json here or in any sub-directory")
    for broken in contents.broken.values():
        raise ManifestError(broken[0].message)
    found: Found = {}
    for name, versions in sorted(contents.versions.items()):
        for v in newest(versions, settings.model_versions):
            d = versions[v]
            found.setdefault(name, {})[v] = (d.directory, d.fingerprint, load_manifest(d.directory))
    default = settings.default_model or sorted(found)[0]
    if default not in found:
        raise ManifestError(f"ELF_DEFAULT_MODEL={default!r} is not among {sorted(found)}")
    return found


def load_models(
    settings: Settings, metrics: Metrics, registry: ModelRegistry | None = None
) -> ModelRegistry:
    """Load, check and warm every model, then start their batchers (into `registry`)."""
    registry = registry if registry is not None else ModelRegistry(settings.default_model)
    for name, versions in find_manifests(settings).items():
        loaded = {}
        for v, (d, fp, manifest) in versions.items():
            loaded[v] = load_model(d, manifest, settings, metrics)
            loaded[v].fingerprint = fp
        for model in loaded.values():
            model.start()
            log.info("serving %s %s on %s", model.name, model.version, model.providers)
        registry.replace(name, loaded)
    return registry
