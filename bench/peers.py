"""Virtual environments for the peers whose dependencies clash with the project's venv.

KServe 0.21 and Ray Serve 2.60 pull their own pins (kubernetes, grpcio, pandas, ray's binaries);
each gets its own venv, made on first use under `runs/bench-venvs/<peer>` from
`bench/baselines/requirements/<peer>.lock` (every package pinned, as resolved when these results
were taken; no torch: the peers run full.onnx with ONNX Runtime CPU). A venv whose lock file
changed since it was made is made again. Not part of `make test`: only bench/http.py uses them.

    python -m bench.peers             # make (or check) every peer venv
    python -m bench.peers --peer ray
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import venv
from pathlib import Path

log = logging.getLogger("bench.peers")

REQUIREMENTS = Path(__file__).parent / "baselines" / "requirements"
PEERS = ("kserve", "ray")
ROOT = Path("runs/bench-venvs")
STAMP = ".bench-lock-sha256"  # the lock file's hash when the venv was made


def lock_file(peer: str) -> Path:
    return REQUIREMENTS / f"{peer}.lock"


def python(peer: str, root: Path = ROOT) -> Path:
    """The peer venv's interpreter, the venv made first when missing or stale."""
    env = root / peer
    lock = lock_file(peer)
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    stamp = env / STAMP
    exe = env / "bin" / "python"
    if exe.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == digest:
        return exe
    log.info("making the %s venv in %s from %s (minutes; once)", peer, env, lock)
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(lock)], check=True)
    stamp.write_text(digest, encoding="utf-8")
    return exe


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", choices=PEERS, nargs="+", default=list(PEERS))
    p.add_argument("--root", type=Path, default=ROOT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for peer in args.peer:
        sys.stdout.write(f"{peer}: {python(peer, args.root)}\n")


if __name__ == "__main__":
    main()
