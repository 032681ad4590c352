"""(f) Ray Serve (`ray[serve]` 2.60) serving full.onnx with `@serve.batch`.

One deployment, one replica, behind Ray Serve's HTTP proxy on a local Ray instance started by
this process (num_cpus = the machine's CPUs, no dashboard): `POST /predict` with the raw image as
the body, decoded in the replica, batched by `@serve.batch(max_batch_size, batch_wait_timeout_s)`
and run as one `sess.run` per batch, as Ray's batching guide writes it. `max_ongoing_requests`
is raised to 64 (Ray's default, 5, would cap every batch at 5), access logs off as everywhere
here. Runs in its own venv (bench/peers.py makes it), not the project's.

    python -m bench.baselines.ray_app --model-dir models/fashion-mnist-lt --port 8005
    curl --data-binary @shirt.png -H 'Content-Type: image/png' http://127.0.0.1:8005/predict
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from bench.baselines.batch_log import BatchLog
from bench.baselines.common import load_full_model


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=64,
    logging_config={"log_level": "WARNING", "enable_access_log": False},
)
class FullOnnx:
    def __init__(self, model_dir: str, max_batch_size: int, wait_s: float, log: str) -> None:
        self.model = load_full_model(Path(model_dir))
        self.log = BatchLog(Path(log) if log else None)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict_batch(self, xs: list[np.ndarray]) -> list[dict[str, Any]]:
        self.log.add(len(xs))
        probs = self.model.predict(np.stack(xs))
        return [self.model.answer(p) for p in probs]

    async def __call__(self, request: Request) -> dict[str, Any]:
        if request.method == "GET":  # the readiness probe
            return {"ok": True}
        return await self.predict_batch(self.model.preprocess(await request.body()))


def _shutdown(signum: int, frame: Any) -> None:
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8005)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--batch-log", type=Path, default=None, help="JSON histogram of batch sizes")
    args = p.parse_args(argv)
    root = str(Path(__file__).resolve().parents[2])  # the replica imports bench.baselines
    # Ray's 5 s proxy readiness check fails on a busy 2-core machine (the proxy actor is then
    # killed); the workers inherit these from the raylet this process starts.
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "120")
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},
    )
    serve.start(http_options={"host": args.host, "port": args.port})
    app = FullOnnx.bind(  # type: ignore[attr-defined]
        str(args.model_dir.resolve()),
        args.max_batch_size,
        args.batch_wait_ms / 1e3,
        str(args.batch_log.resolve()) if args.batch_log else "",
    )
    signal.signal(signal.SIGTERM, _shutdown)
    serve.run(app, name="full", route_prefix="/", blocking=False)
    signal.pause()


if __name__ == "__main__":
    main()
