"""One operating point across workers and restarts: threshold overrides in ELF_STATE_DIR.

`thresholds.json` in the state directory holds, per model name, the thresholds an operator set
with PUT /v1/models/{name}/thresholds and the model version they were set for:

    {"models": {"fashion-mnist-lt": {"version": "1", "thresholds": [0.7, 0.6, 0.0]}}}

A PUT rewrites it under an exclusive lock (read, change one model, write a temporary file, fsync,
os.replace: readers only ever see a whole file). Every worker reads the file (a few hundred
bytes; its content, not its mtime, which a fast second write may not change) every `poll_s`
seconds on a daemon thread and applies it when it changed, so a change
reaches every uvicorn worker within a second, and a restart with the same directory starts from
it. An entry written for another model version is ignored with a warning: a new export brings its
own calibrated point.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from server.load.operating_point import rebase
from server.metrics import Metrics
from server.registry import ModelRegistry

log = logging.getLogger(__name__)

OVERRIDES_FILE = "thresholds.json"
LOCK_FILE = ".thresholds.lock"

# model name -> (version, thresholds)
Overrides = dict[str, tuple[str, list[float]]]
Apply = Callable[[str, str, list[float]], None]


class StateError(RuntimeError):
    pass


class ThresholdStore:
    """Reads and writes `thresholds.json` in `directory`, and follows it on a poller thread."""

    def __init__(self, directory: Path, poll_s: float = 0.25) -> None:
        self.directory = directory
        self.path = directory / OVERRIDES_FILE
        self.poll_s = poll_s
        self._seen: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def read(self) -> Overrides:
        """The overrides on disk ({} when there is no file); StateError names a bad file."""
        try:
            return self._parse(self.path.read_bytes())
        except FileNotFoundError:
            return {}

    def _parse(self, data: bytes) -> Overrides:
        try:
            raw: Any = json.loads(data)
            return {
                str(name): (str(entry["version"]), [float(v) for v in entry["thresholds"]])
                for name, entry in raw["models"].items()
            }
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"{self.path}: not a valid overrides file ({exc!r})") from exc

    def write(self, model: str, version: str, thresholds: list[float]) -> None:
        """Set one model's entry, keeping the others (atomic, serialised across processes)."""
        with self._locked():
            current = self.read()
            current[model] = (version, list(thresholds))
            body = {"models": {n: {"version": v, "thresholds": t} for n, (v, t) in current.items()}}
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".thresholds.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(body, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.directory / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def poll_once(self, apply: Apply) -> bool:
        """Apply the file if it changed since the last look; True when it did."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        if data == self._seen:
            return False
        overrides = self._parse(data)
        self._seen = data
        for name, (version, thresholds) in overrides.items():
            apply(name, version, thresholds)
        return True

    def follow(self, apply: Apply) -> None:
        """Apply the file now (StateError propagates: a bad file stops the start), then poll."""
        self.poll_once(apply)
        self._thread = threading.Thread(
            target=self._poll, args=(apply,), name="elf-state-poll", daemon=True
        )
        self._thread.start()

    def _poll(self, apply: Apply) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once(apply)
            except Exception:  # a half-edited file by hand must not end the poller
                log.exception("%s: cannot apply the threshold overrides", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


def follow_overrides(store: ThresholdStore, registry: ModelRegistry, metrics: Metrics) -> None:
    """Apply the overrides on disk to `registry` now and whenever the file changes."""

    def apply(name: str, version: str, thresholds: list[float]) -> None:
        model = registry.models.get(name)
        if model is None:
            log.warning("%s: overrides for %s, which this server does not serve", store.path, name)
            return
        if version != model.manifest.version:
            log.warning(
                "%s: overrides for %s version %s ignored (serving version %s)",
                store.path, name, version, model.manifest.version,
            )  # fmt: skip
            return
        if tuple(thresholds) == model.thresholds:
            return
        previous = model.set_thresholds(thresholds)
        metrics.set_thresholds(name, model.thresholds)
        rebase(model, metrics)  # the load controller starts again from the new base
        log.info("%s: thresholds %s -> %s (state directory)", name, list(previous), thresholds)

    store.follow(apply)
