"""elf_core loads where torch, onnx and onnxruntime cannot be imported (the serving image)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, pkgutil, sys
for name in ("torch", "onnx", "onnxscript", "onnxruntime", "training", "model_export"):
    sys.modules[name] = None  # any import of these raises ImportError
import elf_core
mods = [m.name for m in pkgutil.iter_modules(elf_core.__path__, "elf_core.")]
for m in mods:
    importlib.import_module(m)
print(len(mods))
"""


def test_every_core_module_imports_without_torch_onnx_or_the_other_parts() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == 7, out.stderr
