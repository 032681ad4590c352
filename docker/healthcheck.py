"""HEALTHCHECK of the serving images: GET /v2/health/ready on the port elf-serve listens on.

The port comes from the command line of the container's main process (PID 1), so a container
started as `elf-serve --port P` (host networking on a free port) is checked on P, and the image's
own CMD on 8000. Exit status 0 when the server answers 200 (every stage loaded and warmed up),
1 otherwise, as Docker's HEALTHCHECK expects. Standard library only: it runs in the image's venv.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000


def listen_port(argv: list[str]) -> int:
    """The value of --port (or --port=P) in an elf-serve command line, else 8000."""
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.removeprefix("--port="))
    return DEFAULT_PORT


def main() -> int:
    cmdline = Path("/proc/1/cmdline").read_bytes().decode(errors="replace")
    port = listen_port(cmdline.split("\0"))
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")  # shown by docker inspect (State.Health.Log)
        return 1


if __name__ == "__main__":
    sys.exit(main())
