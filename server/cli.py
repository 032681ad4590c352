"""`elf-serve`: run the service under uvicorn. Flags override the ELF_* environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

import uvicorn
from pydantic import ValidationError

from server.metrics import prepare_multiprocess
from server.settings import Settings, unknown_variables

# flag -> settings field (the environment variable is ELF_<FIELD>).
_FLAGS = {
    "model_dir": "path of one model directory, or a root of several",
    "default_model": "model behind /v1/classify (default: first by name)",
    "providers": "auto | cpu | cuda",
    "max_batch_size": "rows per stage batch",
    "max_queue_delay_ms": "longest wait for a fuller batch",
    "max_queue_size": "images admitted per model before 503",
    "request_timeout_s": "per-request timeout (504)",
    "intra_op_threads": "ONNX Runtime threads per session (0 = CPUs / workers)",
    "state_dir": "directory of state shared by workers and kept across restarts",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="elf-serve", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Flags become ELF_* variables so that every uvicorn worker process builds the same Settings.
    for field in (*_FLAGS, "workers", "log_level"):
        value = getattr(args, field)
        if value is not None:
            os.environ[f"ELF_{field.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"elf-serve: invalid settings: {exc}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in unknown_variables():
        logging.getLogger("elf-serve").warning("%s is not a setting of elf-serve; ignored", name)
    made = prepare_multiprocess(settings.workers)  # before any worker imports prometheus_client
    try:
        _run(args, settings)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _run(args: argparse.Namespace, settings: Settings) -> None:
    uvicorn.run(
        "server.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=int(args.graceful_timeout),
    )


if __name__ == "__main__":
    main()
