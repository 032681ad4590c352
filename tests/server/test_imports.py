"""The server never imports torch (nor onnx, absent from the serving install)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, json, pkgutil, sys
import server
names = sorted(m.name for m in pkgutil.walk_packages(server.__path__, "server."))
for name in names:
    importlib.import_module(name)
from server.app import create_app
from server.settings import Settings
create_app(Settings(model_dir="/nonexistent"))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "torchvision"))
print(json.dumps({"modules": names, "heavy": heavy}))
"""


def test_importing_every_server_module_loads_no_torch_and_no_onnx() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "server.batching.batcher" in result["modules"] and "server.cli" in result["modules"]
    assert len(result["modules"]) >= 15
    assert result["heavy"] == []
