"""The live model repository: list, load and unload the models under ELF_MODEL_DIR while serving
(Triton's model repository extension, server/api/repository.py and server/grpc/service.py), and
follow it every ELF_REPOSITORY_POLL_S seconds.

A load reads the repository again and serves the newest ELF_MODEL_VERSIONS versions of the name:
a version not yet served, or whose directory changed, is loaded next to what serves (manifest
and sha256, ONNX Runtime sessions, warm-up at every batch size) and only then enters the
registry, in one step with every other version of the name (server/registry.py). Versions it
replaces take no new request, drain (the requests that hold them are answered) and stop. A
directory that fails is refused with one line saying why (a 400, gRPC INVALID_ARGUMENT) and
changes nothing: what served before serves on. One load or unload runs at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from elf_core.manifest import ManifestError, load_manifest
from server.load.in_flight import RequestMonitor
from server.load.operating_point import start_controller
from server.metrics import Metrics
from server.model_repository import (
    RepositoryContents,
    VersionDir,
    newest,
    read_repository,
    version_key,
)
from server.preprocess import InputError
from server.registry import ModelRegistry, ServedModel, UnknownModelError, load_model
from server.settings import Settings
from server.threshold_store import ThresholdStore

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index (Triton's: name, version, state, reason)."""

    name: str
    version: str
    state: str  # READY | LOADING | UNAVAILABLE
    reason: str


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


class Repository:
    """Changes `registry` (the models requests read) to follow the repository."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: ModelRegistry,
        requests: RequestMonitor | None = None,
    ) -> None:
        self.settings, self.metrics, self.registry = settings, metrics, registry
        self.requests = requests  # the load controllers' (ELF_LATENCY_TARGET_MS)
        self.store: ThresholdStore | None = None  # ELF_STATE_DIR's threshold overrides
        self._changes = threading.Lock()  # one load or unload at a time
        self._failed: dict[str, str] = {}  # name -> why its last load failed
        self._unloaded: set[str] = set()  # names unloaded through the API
        self._loading: set[tuple[str, str]] = set()
        self._seen: dict[str, dict[str, str]] = {}  # the poll's last look, by name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return self.settings.model_dir

    def read(self) -> RepositoryContents:
        try:
            return read_repository(self.root)
        except (ManifestError, OSError) as exc:  # the root itself went away
            log.warning("model repository %s: %s", self.root, _one_line(exc))
            return RepositoryContents()

    def seen_now(self) -> None:
        """Remember the repository as it is (before the start-up load): the poll acts on what
        changes after this."""
        contents = self.read()
        self._seen = {name: contents.fingerprints(name) for name in contents.names()}

    # ---- the repository extension ----

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every version in the repository or served, and each broken directory (version "")."""
        contents, out = self.read(), []
        for name in sorted(set(contents.names()) | set(self.registry.models)):
            served = self.registry.versions(name)
            for v in sorted({*contents.versions.get(name, {}), *served}, key=version_key):
                out.append(self._entry(name, v, served))
            broken = contents.broken.get(name, [])
            out += [IndexEntry(name, "", UNAVAILABLE, b.message) for b in broken]
        return [e for e in out if e.state == READY] if ready_only else out

    def _entry(self, name: str, version: str, served: list[str]) -> IndexEntry:
        if version in served:
            return IndexEntry(name, version, READY, "")
        if (name, version) in self._loading:
            return IndexEntry(name, version, LOADING, "")
        if name in self._failed:
            return IndexEntry(name, version, UNAVAILABLE, self._failed[name])
        if name in self._unloaded:
            return IndexEntry(name, version, UNAVAILABLE, "unloaded")
        return IndexEntry(name, version, UNAVAILABLE, "not loaded")

    def load(self, name: str) -> list[str]:
        """Serve the newest versions of `name` in the repository; the versions served after."""
        self._one_worker("load")
        with self._changes:
            return self._load(name, self.read())

    def unload(self, name: str) -> None:
        """Stop serving `name` (every version); its requests in flight are answered first."""
        self._one_worker("unload")
        with self._changes:
            if name not in self.registry.models and name not in self.read().names():
                raise UnknownModelError(f"unknown model {name!r}: not served, not in {self.root}")
            self._unloaded.add(name)
            self._retire(self.registry.replace(name, {}))
            log.info("%s: unloaded", name)

    def _one_worker(self, call: str) -> None:
        """Each worker holds its models: a call that one worker answers cannot change them all."""
        n = self.settings.workers
        if n > 1:
            raise InputError(
                f"{call}: with {n} workers (ELF_WORKERS) each holds its own models; change the "
                "repository and let every worker follow it (ELF_REPOSITORY_POLL_S)",
                reason="bad_request",
            )

    # ---- loading ----

    def _load(self, name: str, contents: RepositoryContents) -> list[str]:
        dirs = contents.versions.get(name, {})
        broken = contents.broken.get(name, [])
        if broken:
            self._failed[name] = broken[0].message
            raise InputError(self._refusal(name, broken[0].message), reason="load_failed")
        if not dirs:
            raise UnknownModelError(f"no model directory for {name!r} in {self.root}")
        current = {v: self.registry.get(name, v) for v in self.registry.versions(name)}
        wanted, keep = newest(dirs, self.settings.model_versions), {}
        for v in wanted:
            if v in current and current[v].fingerprint == dirs[v].fingerprint:
                keep[v] = current[v]
        fresh = self._load_versions(name, [dirs[v] for v in wanted if v not in keep])
        self._failed.pop(name, None)
        self._unloaded.discard(name)
        if not fresh and keep.keys() == current.keys():
            return list(keep)  # nothing changed
        retired = self.registry.replace(name, keep | fresh)
        for model in retired:  # before the new controllers: they share the name's window
            if model.controller is not None:
                model.controller.stop()
                model.controller = None
        for model in fresh.values():
            start_controller(model, self.settings, self.metrics, self.requests)
            log.info("serving %s %s on %s", name, model.version, model.providers)
        self._retire(retired)
        self._drop_gauges(name, [])
        return self.registry.versions(name)

    def _drop_gauges(self, name: str, dropped: list[ServedModel]) -> None:
        """Gauges of versions loaded and not served go; the thresholds shown are the newest's."""
        served = self.registry.versions(name)
        for model in dropped:
            if model.version not in served:
                self.metrics.forget_version(name, model.version, ",".join(model.providers))
        if served:
            self.metrics.set_thresholds(name, self.registry.get(name).thresholds)

    def _load_versions(self, name: str, dirs: list[VersionDir]) -> dict[str, ServedModel]:
        """Load and warm each; all or nothing (InputError naming the directory that failed)."""
        loaded: dict[str, ServedModel] = {}
        for d in dirs:
            self._loading.add((name, d.version))
            try:
                loaded[d.version] = self._load_version(d)
            except Exception as exc:  # the directory's fault, whatever ONNX Runtime raised
                message = f"{d.directory}: {_one_line(exc)}"
                log.warning("%s version %s not loaded: %s", name, d.version, message)
                self._failed[name] = message
                self._drop_gauges(name, list(loaded.values()))  # what load_model published
                raise InputError(self._refusal(name, message), reason="load_failed") from None
            finally:
                self._loading.discard((name, d.version))
        for model in loaded.values():
            model.start()
        return loaded

    def _load_version(self, d: VersionDir) -> ServedModel:
        manifest = load_manifest(d.directory)  # sha256 of every file
        if (manifest.name, manifest.version) != (d.name, d.version):
            raise ManifestError("the manifest changed while it was being loaded; load again")
        model = load_model(d.directory, manifest, self.settings, self.metrics)
        model.fingerprint = d.fingerprint
        self._apply_override(model)
        return model

    def _apply_override(self, model: ServedModel) -> None:
        """The thresholds an operator set for this very version (ELF_STATE_DIR), if any."""
        if self.store is None:
            return
        version, thresholds = self.store.read().get(model.name, ("", []))
        if version == model.version and thresholds:
            model.set_thresholds(thresholds)
            self.metrics.set_thresholds(model.name, model.thresholds)

    def _refusal(self, name: str, why: str) -> str:
        served = self.registry.versions(name)
        still = f"still serving version {', '.join(served)}" if served else "not served"
        return f"cannot load model {name!r}: {why} ({still})"

    def _retire(self, models: list[ServedModel]) -> None:
        """Drain each replaced model, stop it, and drop the gauges of versions no longer served."""
        timeout_s = self.settings.request_timeout_s
        for model in models:
            if not self.registry.drain(model, timeout_s):
                log.warning("%s %s: still held after %s s", model.name, model.version, timeout_s)
            model.stop(timeout_s)
            self._drop_gauges(model.name, [model])
            log.info("%s %s: drained and stopped", model.name, model.version)

    # ---- poll mode ----

    def poll_once(self) -> None:
        """Load what is new or changed since the last look; unload what was removed."""
        with self._changes:
            contents = self.read()
            for name in sorted(set(contents.names()) | set(self._seen)):
                now = contents.fingerprints(name)
                if now == self._seen.get(name, {}):
                    continue
                self._seen[name] = now
                self._follow(name, contents, now)

    def _follow(self, name: str, contents: RepositoryContents, now: dict[str, str]) -> None:
        try:
            if now:
                self._load(name, contents)
            elif name in self.registry.models:
                self._retire(self.registry.replace(name, {}))
                log.info("%s: its directories were removed; unloaded", name)
        except (InputError, UnknownModelError) as exc:
            log.warning("poll: %s", exc)

    def start_polling(self) -> None:
        """With ELF_REPOSITORY_POLL_S set: poll_once on a daemon thread at that interval."""
        interval = self.settings.repository_poll_s
        if interval is None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll_once()
                except Exception:  # the poller must outlive one bad read
                    log.exception("model repository poll failed")

        self._thread = threading.Thread(target=run, name="elf-repository-poll", daemon=True)
        self._thread.start()
        log.info("polling %s every %s s", self.root, interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.request_timeout_s)


def check_parameters(call: str, parameters: Iterable[str]) -> None:
    """A load takes the model from its directory in the repository: Triton's `config` and
    `file:` parameters (a model sent in the request) are refused; `unload_dependents` has
    nothing to act on (no model depends on another) and is accepted."""
    unknown = sorted(p for p in parameters if p != "unload_dependents" or call != "unload")
    if unknown:
        raise InputError(
            f"{call}: parameters {unknown} are not supported; a model loads from its directory "
            "in the repository (ELF_MODEL_DIR)",
            reason="bad_request",
        )
