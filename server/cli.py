"""`elf-serve`: run the service under uvicorn or Granian (--http-server). Flags override the ELF_*
environment variables.

A user's mistake (a bad setting, a missing or broken model directory) ends in one line,
`elf-serve: error: <what and how to fix>`, and exit code 2, before the HTTP server starts; the
traceback only with `--log-level debug`. After SIGTERM and a clean drain the exit code is 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType
from typing import NoReturn

from pydantic import ValidationError

from elf_core.manifest import ManifestError
from server.engine.placement import EngineError, requested_providers
from server.engine.sessions import check_graphs
from server.frontend import FrontendError, Listen, serve
from server.frontend import check as check_frontend
from server.grpc.port import GrpcPortError, check_grpc_port
from server.metrics import MULTIPROC_ENV, prepare_multiprocess
from server.registry import find_manifests
from server.settings import Settings, unknown_variables

# flag -> settings field (the environment variable is ELF_<FIELD>).
_FLAGS = {
    "model_dir": "path of one model directory, or a root of several",
    "default_model": "model behind /v1/classify (default: first by name)",
    "providers": "auto | cpu | cuda",
    "max_batch_size": "rows per stage batch",
    "max_queue_delay_ms": "longest wait for a fuller batch",
    "max_queue_size": "images admitted per model before 503",
    "scheduling": "deepest-first | age-aware (which ready stage runs next)",
    "request_timeout_s": "per-request timeout (504)",
    "intra_op_threads": "ONNX Runtime threads per session (0 = CPUs / workers)",
    "state_dir": "directory of state shared by workers and kept across restarts",
    "http_server": "uvicorn | granian (the HTTP server in front of the app)",
    "grpc_port": "gRPC port of the Open Inference Protocol (0 or off: no gRPC)",
}


def build_parser() -> argparse.ArgumentParser:
    """elf-serve's flags; each settings flag's `dest` is its settings field (the docs' table)."""
    p = argparse.ArgumentParser(prog="elf-serve", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None, help="worker processes")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request (slower)")
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds for in-flight requests at shutdown",
    )
    for field, text in _FLAGS.items():
        p.add_argument("--" + field.replace("_", "-"), dest=field, default=None, help=text)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
        for e in exc.errors()
    )


def manifest_message(exc: ManifestError) -> str:
    """The model directory's fault on one line (pydantic's report spans several)."""
    if isinstance(exc.__cause__, ValidationError):
        head = str(exc).split("\n", 1)[0].rsplit(": ", 1)[0]  # "<path>: invalid manifest"
        return f"{head}: {_errors(exc.__cause__)}"
    return " ".join(str(exc).split())


def settings_message(exc: ValidationError) -> str:
    """One line naming each bad setting as the user wrote it (variable, flag, value)."""
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across settings: its message names them
            parts.append(msg)
            continue
        field = str(err["loc"][0])
        flag = f" (--{field.replace('_', '-')})" if field in _FLAGS else ""
        parts.append(f"ELF_{field.upper()}{flag}={err.get('input')!r}: {msg}")
    return "invalid settings: " + "; ".join(parts)


def check(settings: Settings) -> None:
    """What the server would fail on at start-up, checked here to fail in one line."""
    check_frontend(settings.http_server)
    requested_providers(settings)
    found = find_manifests(settings)
    check_grpc_port(settings)
    for versions in found.values():
        for model_dir, _, manifest in versions.values():
            check_graphs(manifest, model_dir)


def _fail(message: str, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    print(f"elf-serve: error: {message}", file=sys.stderr)  # noqa: T201
    sys.exit(2)


def _settings(args: argparse.Namespace) -> Settings:
    # Flags become ELF_* variables so that every worker process builds the same Settings.
    for field in (*_FLAGS, "workers", "log_level"):
        value = getattr(args, field)
        if value is not None:
            os.environ[f"ELF_{field.upper()}"] = str(value)
    # gRPC listens where HTTP does unless told otherwise (server/grpc/server.py).
    os.environ.setdefault("ELF_GRPC_HOST", args.host)
    debug = os.environ.get("ELF_LOG_LEVEL", "").lower() == "debug"
    try:
        settings = Settings()
        check(settings)
    except ValidationError as exc:
        _fail(settings_message(exc), debug)
    except ManifestError as exc:
        fix = "point --model-dir (ELF_MODEL_DIR) at a directory that elf-export wrote"
        _fail(f"{manifest_message(exc)}; {fix}", debug)
    except (EngineError, FrontendError, GrpcPortError) as exc:
        _fail(str(exc), debug)
    return settings


def _absorb_sigterm(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the SIGTERM it drained on; arriving here, the process exits 0."""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in unknown_variables():
        logging.getLogger("elf-serve").warning("%s is not a setting of elf-serve; ignored", name)
    signal.signal(signal.SIGTERM, _absorb_sigterm)
    made = prepare_multiprocess(settings.workers)  # before any worker imports prometheus_client
    state = private_state_dir(settings)
    try:
        _run(args, settings)
    finally:
        if made is not None:  # the variable named the directory we made: neither outlives us
            shutil.rmtree(made, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)
            os.environ.pop(STATE_ENV, None)


STATE_ENV = "ELF_STATE_DIR"


def private_state_dir(settings: Settings) -> Path | None:
    """Several workers without ELF_STATE_DIR: a directory of this run that they all follow, so
    that a threshold PUT reaches every worker (each builds its Settings from the environment);
    the caller removes it at exit, so nothing outlives the run. None when not needed."""
    if settings.workers <= 1 or settings.state_dir is not None:
        return None
    made = Path(tempfile.mkdtemp(prefix="elf-state-"))
    os.environ[STATE_ENV] = str(made)
    logging.getLogger("elf-serve").info(
        "%d workers share threshold changes through %s (removed at exit; set %s to keep them "
        "across restarts)",
        settings.workers,
        made,
        STATE_ENV,
    )
    return made


def _run(args: argparse.Namespace, settings: Settings) -> None:
    listen = Listen(args.host, args.port, args.access_log, args.graceful_timeout)
    serve(settings, listen)


if __name__ == "__main__":
    main()
