"""The HTTP server in front of the app (ELF_HTTP_SERVER / `elf-serve --http-server`).

  uvicorn  (default) uvloop + httptools, with server/http_protocol.py's head cap and one socket
           write per response; `--workers N` are uvicorn's spawned worker processes.
  granian  Granian (the `granian` extra): HTTP parsing, connections and socket writes in Rust
           (hyper, tokio); the same ASGI app, lifespan and middleware run on its asyncio loop.
           This process supervises N spawned worker processes (one even at `--workers 1`).

Slow and idle clients (ELF_HEAD_TIMEOUT_S, ELF_KEEP_ALIVE_TIMEOUT_S, ELF_MAX_CONNECTIONS):
uvicorn gets its own timeout_keep_alive and limit_concurrency, and the head timeout from
server/http_protocol.py; Granian gets hyper's header read timeout and its backpressure (it has
no idle keep-alive timeout of its own). docs/serving/limits.md says what each frontend does.

Both serve `server.app:app_from_env` (every worker builds the same Settings from ELF_*), run
its lifespan (models loaded into app.state before the port answers), cap a request's head at
MAX_HEAD_BYTES (uvicorn: 431 with a JSON reason; granian: hyper's bare 431), and on SIGTERM stop
accepting, let in-flight requests finish for up to the graceful timeout, run the lifespan's
shutdown (batchers drained, metrics marked) and exit 0.
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
from dataclasses import dataclass
from typing import Any

import uvicorn

from server.http_protocol import MAX_HEAD_BYTES, HeadCappedHttpToolsProtocol
from server.settings import HttpServer, Settings

APP_FACTORY = "server.app:app_from_env"


@dataclass(frozen=True)
class Listen:
    """Where and how to listen (flags only; what the app does is in Settings)."""

    host: str
    port: int
    access_log: bool
    graceful_timeout_s: float


class FrontendError(Exception):
    """The chosen HTTP server cannot run here (a user's fix, in one line)."""


def check(server: HttpServer) -> None:
    if server == "granian" and importlib.util.find_spec("granian") is None:
        raise FrontendError(
            "ELF_HTTP_SERVER=granian needs Granian: pip install 'elf-serving[granian]'"
        )


def serve(settings: Settings, listen: Listen) -> None:
    """Run until SIGTERM/SIGINT and the drain; blocks."""
    if settings.http_server == "granian":
        _granian(settings, listen)
    else:
        _uvicorn(settings, listen)


def _uvicorn(settings: Settings, listen: Listen) -> None:
    # A partial of a module-level class: picklable, so spawned workers get it too.
    protocol = functools.partial(
        HeadCappedHttpToolsProtocol, head_timeout_s=settings.head_timeout_s
    )
    uvicorn.run(
        APP_FACTORY,
        http=protocol,  # type: ignore[arg-type]
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections,
        factory=True,
        host=listen.host,
        port=listen.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=listen.access_log,
        timeout_graceful_shutdown=int(listen.graceful_timeout_s),
    )


def _granian(settings: Settings, listen: Listen) -> None:
    # Workers are spawned, not forked: each imports prometheus_client afresh after
    # PROMETHEUS_MULTIPROC_DIR is set (multiprocess mode), as uvicorn's workers do; a fork
    # would inherit this process's single-process metric values.
    multiprocessing.set_start_method("spawn", force=True)
    granian_server(settings, listen).serve()


def granian_server(settings: Settings, listen: Listen, **options: Any) -> Any:
    """Granian's Server for the app; `options` override its keyword arguments (bench only:
    bench/granian_options.py compares them side by side)."""
    from granian.constants import Interfaces, Loops  # noqa: PLC0415  (optional extra)
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415
    from granian.server import Server  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        "address": listen.host,
        "port": listen.port,
        "interface": Interfaces.ASGI,  # with lifespan
        "factory": True,
        "workers": settings.workers,
        "loop": Loops.uvloop,
        # hyper's read buffer bounds the request head: past it, 431 and close (as uvicorn's cap).
        "http1_settings": HTTP1Settings(
            max_buffer_size=MAX_HEAD_BYTES,
            # hyper's timer for a request head; Granian has no separate idle keep-alive timeout.
            header_read_timeout=max(1, round(settings.head_timeout_s * 1000)),
        ),
        "backpressure": settings.max_connections,  # requests in flight per worker
        "log_level": LogLevels(settings.log_level),
        "log_access": listen.access_log,
        # A worker still busy this long after SIGTERM is killed (uvicorn: cancelled).
        "workers_kill_timeout": max(1, round(listen.graceful_timeout_s)),
    }
    return Server(APP_FACTORY, **(kwargs | options))
