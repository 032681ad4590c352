"""`elf-serve` with a gate in front of every stage run and a log of what the server did, for
tests that must know the order of events in a real server process without sleeping.

    python -m tests.server.gated_serve --host 127.0.0.1 --port N   (as elf-serve)

ELF_TEST_GATE names a FIFO: the test writes b"c" to hold every batcher stage run and b"o" to let
them go (the gate starts open, so loading and warm-up run). ELF_TEST_EVENTS names a FIFO the
server writes one line per event to: `gate c` / `gate o` once a gate change took effect,
`admitted N` / `refused N` for every batcher submit of N rows, `run K N` when the worker starts a
stage-K run of N rows (before it waits at the gate), `signal S` when uvicorn gets a signal,
`draining` once uvicorn has closed its listening sockets and waits for the open requests.
Both FIFOs are opened read-write so that neither side blocks on open (Linux). Under Granian
(ELF_HTTP_SERVER=granian) the gate and the stage/submit events work in its worker process;
`signal` and `draining` are uvicorn's only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from server import cli
from server.batching.batcher import Batcher
from server.batching.rows import Row
from server.engine.runner import OnnxStageRunner

_open = threading.Event()
_open.set()
_events_fd = os.open(os.environ["ELF_TEST_EVENTS"], os.O_RDWR)


def event(text: str) -> None:
    # One short write per line: atomic on a FIFO, so no lock (also safe in a signal handler).
    os.write(_events_fd, (text + "\n").encode())


def _gate_reader() -> None:
    fd = os.open(os.environ["ELF_TEST_GATE"], os.O_RDWR)
    while True:
        byte = os.read(fd, 1)
        if byte == b"o":
            event("gate o")  # before the runs it lets go
            _open.set()
        elif byte == b"c":
            _open.clear()
            event("gate c")  # after: every run from here on waits


def install() -> None:
    run, submit, handle_exit = OnnxStageRunner.run, Batcher.submit, uvicorn.Server.handle_exit
    wait_tasks = uvicorn.Server._wait_tasks_to_complete

    def gated_run(self: OnnxStageRunner, k: int, x: Any) -> Any:
        if threading.current_thread().name.startswith("batcher-"):  # not the warm-up
            event(f"run {k} {x.shape()[0]}")
            _open.wait()
        return run(self, k, x)

    def logged_submit(self: Batcher, rows: Sequence[Row]) -> None:
        try:
            submit(self, rows)
        except Exception:
            event(f"refused {len(rows)}")
            raise
        event(f"admitted {len(rows)}")

    def logged_exit(self: uvicorn.Server, sig: int, frame: FrameType | None) -> None:
        handle_exit(self, sig, frame)
        event(f"signal {sig}")

    async def logged_drain(self: uvicorn.Server) -> None:
        event("draining")  # the listening sockets are closed; open requests may finish
        await wait_tasks(self)

    OnnxStageRunner.run = gated_run  # type: ignore[method-assign]
    Batcher.submit = logged_submit  # type: ignore[method-assign]
    uvicorn.Server.handle_exit = logged_exit  # type: ignore[method-assign]
    uvicorn.Server._wait_tasks_to_complete = logged_drain  # type: ignore[method-assign]
    threading.Thread(target=_gate_reader, name="test-gate", daemon=True).start()


# The hooks go where the batcher runs: uvicorn's one process, or the worker process Granian
# spawns (multiprocessing imports this main module there again, as __mp_main__).
_GRANIAN = os.environ.get("ELF_HTTP_SERVER") == "granian"
if __name__ == ("__mp_main__" if _GRANIAN else "__main__"):
    install()
if __name__ == "__main__":
    cli.main()
