"""What both hand-written baselines share: read the manifest as JSON, decode like a user would.

Deliberately independent of server/ (a user serving full.onnx has none of it; softmax is
elf_core's, the one every part uses): Pillow decode, convert to the model's channels, resize when
the size differs, scale to [0, 1], normalise.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from elf_core.exits import softmax


@dataclass(frozen=True)
class FullModel:
    session: ort.InferenceSession
    class_names: list[str]
    mode: str  # Pillow mode: "L" or "RGB"
    size: tuple[int, int]  # (width, height)
    mean: np.ndarray  # [C, 1, 1]
    std: np.ndarray  # [C, 1, 1]

    def preprocess(self, data: bytes) -> np.ndarray:
        """Encoded image -> float32 [C, H, W]."""
        img = Image.open(io.BytesIO(data)).convert(self.mode)
        if img.size != self.size:
            img = img.resize(self.size, Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32) / 255.0
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return np.ascontiguousarray((chw - self.mean) / self.std, dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """[B, C, H, W] -> softmax of the final exit [B, classes] (full.onnx's last output)."""
        return softmax(np.asarray(self.session.run(None, {"input": batch})[-1]))

    def answer(self, probs: np.ndarray) -> dict[str, Any]:
        c = int(probs.argmax())
        return {"label": self.class_names[c], "class_index": c, "confidence": float(probs[c])}


def load_full_model(model_dir: Path) -> FullModel:
    """full.onnx with ONNX Runtime's default session options, as a user would create it."""
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    pre = manifest["preprocessing"]
    session = ort.InferenceSession(
        str(model_dir / manifest["full_model"]["file"]), providers=["CPUExecutionProvider"]
    )
    return FullModel(
        session=session,
        class_names=list(manifest["class_names"]),
        mode="L" if pre["channels"] == 1 else "RGB",
        size=(pre["width"], pre["height"]),
        mean=np.asarray(pre["mean"], dtype=np.float32)[:, None, None],
        std=np.asarray(pre["std"], dtype=np.float32)[:, None, None],
    )
