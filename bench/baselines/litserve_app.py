"""(c) LitServe serving full.onnx with its dynamic batching (one API server process, one
inference worker): the image as a multipart `file` (LitServe parses JSON or forms, not raw
bodies), decoded in `decode_request`, stacked by `batch`, one `sess.run` per batch.

    python -m bench.baselines.litserve_app --model-dir models/fashion-mnist-lt --port 8003
    curl -F file=@shirt.png http://127.0.0.1:8003/predict
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

from bench.baselines.batch_log import BatchLog
from bench.baselines.common import FullModel, load_full_model


class FullOnnxAPI(ls.LitAPI):
    def __init__(
        self, model_dir: Path, max_batch_size: int, batch_timeout: float, batch_log: Path | None
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_dir, self.batch_log = model_dir, batch_log
        self.model: FullModel | None = None
        self.log: BatchLog | None = None

    def setup(self, device: str) -> None:
        self.model = load_full_model(self.model_dir)
        self.log = BatchLog(self.batch_log)  # in the inference worker process

    # `request` stays unannotated: LitServe reads the annotation to pick the request type, and
    # none means starlette's Request, parsed as a form (multipart) here.
    def decode_request(self, request, **kwargs: Any) -> np.ndarray:
        assert self.model is not None
        return self.model.preprocess(request["file"].file.read())

    def predict(self, x: np.ndarray, **kwargs: Any) -> list[np.ndarray]:
        assert self.model is not None and self.log is not None
        batch = x if x.ndim == 4 else x[None]
        self.log.add(len(batch))
        return list(self.model.predict(batch))

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return output

    def encode_response(self, output: Any, **kwargs: Any) -> dict[str, Any]:
        assert self.model is not None
        probs = output[0] if isinstance(output, list) else output  # unbatched: predict's list
        return self.model.answer(np.asarray(probs))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8003)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    p.add_argument("--batch-log", type=Path, default=None, help="JSON histogram of batch sizes")
    args = p.parse_args(argv)
    api = FullOnnxAPI(args.model_dir, args.max_batch_size, args.batch_timeout, args.batch_log)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
