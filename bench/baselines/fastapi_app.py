"""(d) The hand-written baseline: FastAPI, a plain `def` endpoint (FastAPI runs it in its thread
pool), Pillow decode, normalise, `sess.run` on full.onnx, one request at a time, no batching.

    python -m bench.baselines.fastapi_app --model-dir models/fashion-mnist-lt --port 8002
    curl --data-binary @shirt.png -H 'Content-Type: image/png' http://127.0.0.1:8002/predict
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import Body, FastAPI

from bench.baselines.common import load_full_model


def create_app(model_dir: Path) -> FastAPI:
    model = load_full_model(model_dir)
    app = FastAPI(title="full.onnx, per request")

    @app.post("/predict")
    def predict(image: Annotated[bytes, Body(media_type="image/png")]) -> dict[str, Any]:
        x = model.preprocess(image)
        return model.answer(model.predict(x[None])[0])

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    model.predict(np.zeros((1, *model.mean.shape[:1], model.size[1], model.size[0]), np.float32))
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    args = p.parse_args(argv)
    # One uvicorn worker, like every server in the benchmark; uvloop + httptools when installed.
    uvicorn.run(
        create_app(args.model_dir),
        host=args.host,
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
