"""Regenerate the *_pb2 modules from the .proto files here: `python -m server.grpc.proto`.

Needs grpcio-tools (the dev extra). protoc is run with this directory as its only include path,
so the descriptors are named `grpc_service.proto` and `model_config.proto` as in Triton's own
build: byte for byte the descriptors tritonclient registers, so that both load in one process.
protoc writes `import model_config_pb2`; the copies here import their sibling relatively.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("grpc_service.proto", "model_config.proto")
_ABSOLUTE = re.compile(r"^import (\w+_pb2) as ", re.MULTILINE)

log = logging.getLogger(__name__)


def generate(out: Path) -> list[Path]:
    """Write the generated modules into `out`; return their paths."""
    from grpc_tools import protoc  # noqa: PLC0415  (dev extra)

    with tempfile.TemporaryDirectory() as raw:
        args = ["protoc", f"-I{HERE}", f"--python_out={raw}", f"--pyi_out={raw}"]
        rc = protoc.main([*args, f"--grpc_python_out={raw}", *PROTOS])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        written = []
        for src in sorted(Path(raw).iterdir()):
            if src.name.startswith("model_config_pb2_grpc"):
                continue  # model_config.proto declares no service
            text = _ABSOLUTE.sub(r"from . import \1 as ", src.read_text(encoding="utf-8"))
            dst = out / src.name
            dst.write_text(text, encoding="utf-8")
            written.append(dst)
    return written


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(HERE):
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
