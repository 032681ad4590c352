"""`elf-serve` whose stage runs fail on the batcher's threads (loading and warm-up pass), with
an exception text a response must never carry: how the tests force an internal error.

    python -m tests.server.faulty_serve --host 127.0.0.1 --port N   (as elf-serve)
"""

from __future__ import annotations

import threading
from typing import Any

from server import cli
from server.engine.runner import OnnxStageRunner

SECRET = "onnxruntime failed in /opt/models/private-path at node conv_7"


def install() -> None:
    run = OnnxStageRunner.run

    def failing_run(self: OnnxStageRunner, k: int, x: Any) -> Any:
        if threading.current_thread().name.startswith("batcher-"):  # not the warm-up
            raise RuntimeError(SECRET)
        return run(self, k, x)

    OnnxStageRunner.run = failing_run  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    cli.main()
