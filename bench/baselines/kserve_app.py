"""(e) KServe's Python model server (`kserve` 0.21) serving full.onnx, with dynamic batching.

A `kserve.Model` behind `kserve.ModelServer` (its FastAPI app under uvicorn, one worker, gRPC
off, latency logging off like every server's access log here), on KServe's v1 REST protocol:
`POST /v1/models/full:predict` with the raw image as the body (KServe hands a non-JSON body to
the model as bytes), answered `{"predictions": [{label, class_index, confidence}]}`.

Batching: KServe's own batcher is its Go agent sidecar (`spec.predictor.batcher`), not a part of
the Python server; bench.baselines.batch_log.AsyncBatcher does the same in the model (collect up
to --max-batch-size requests or --max-latency-ms after the first, one `sess.run`). Runs in its
own venv (bench/peers.py makes it), not the project's.

    python -m bench.baselines.kserve_app --model-dir models/fashion-mnist-lt --port 8004
    curl --data-binary @shirt.png -H 'Content-Type: image/png' \
        http://127.0.0.1:8004/v1/models/full:predict
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import kserve

from bench.baselines.batch_log import AsyncBatcher, BatchLog
from bench.baselines.common import FullModel, load_full_model

NAME = "full"


class FullOnnxModel(kserve.Model):
    def __init__(self, model_dir: Path, batcher_args: tuple[int, float], log: BatchLog) -> None:
        super().__init__(NAME)
        self.model_dir, self.batcher_args, self.log = model_dir, batcher_args, log
        self.model: FullModel | None = None
        self.batcher: AsyncBatcher | None = None

    def load(self) -> bool:
        self.model = load_full_model(self.model_dir)
        self.batcher = AsyncBatcher(self.model.predict, *self.batcher_args, self.log)
        self.ready = True
        return True

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None):
        assert self.model is not None and self.batcher is not None
        if not isinstance(payload, bytes):
            raise kserve.errors.InvalidInput(
                "send the image as the raw body (Content-Type image/*)"
            )
        probs = await self.batcher.submit(self.model.preprocess(payload))
        return {"predictions": [self.model.answer(probs)]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--port", type=int, default=8004)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-latency-ms", type=float, default=2.0)
    p.add_argument("--batch-log", type=Path, default=None, help="JSON histogram of batch sizes")
    args, _ = p.parse_known_args(argv)
    model = FullOnnxModel(
        args.model_dir, (args.max_batch_size, args.max_latency_ms / 1e3), BatchLog(args.batch_log)
    )
    model.load()
    server = kserve.ModelServer(
        http_port=args.port,
        workers=1,
        enable_grpc=False,
        enable_docs_url=False,
        enable_latency_logging=False,
    )
    # No per-request log lines (uvicorn's access log, KServe's timing trace), as everywhere here.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
