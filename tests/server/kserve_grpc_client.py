"""KServe's Python gRPC client (kserve.InferenceGRPCClient), unchanged, against a live server;
run in its own process by tests/server/test_grpc.py: kserve's generated protobuf modules and
tritonclient's both register `inference.ModelInferRequest`, so one process cannot load both.

    python -m tests.server.kserve_grpc_client HOST:PORT MODEL PIXELS.npy PNG_DIR

Prints one JSON object: the health and metadata answers, and for each way of sending the
images (FP32 or BYTES, typed contents or raw_input_contents) the outputs as lists.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

from tests.server.tiny_model import normalise


def _input(kind: str, raw: bool, pixels: np.ndarray, pngs: list[bytes]) -> InferInput:
    if kind == "FP32":
        x = normalise(pixels)
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=raw)
        return inp
    if not raw:  # typed bytes_contents (set_data_from_numpy would take them for UTF-8 text)
        return InferInput("input", [len(pngs)], "BYTES", data=pngs)
    inp = InferInput("input", [len(pngs)], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
    return inp


def _outputs(response: Any) -> dict[str, Any]:
    out = {}
    for o in response.outputs:
        values = o.as_numpy()
        if o.datatype == "BYTES":
            out[o.name] = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
        else:
            out[o.name] = values.tolist()
    return out


async def main(target: str, model: str, pixels: np.ndarray, pngs: list[bytes]) -> dict[str, Any]:
    client = InferenceGRPCClient(target, timeout=30)
    report: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model),
    }
    for kind in ("FP32", "BYTES"):
        for raw in (False, True):
            request = InferRequest(model, [_input(kind, raw, pixels, pngs)], request_id="k-1")
            response = await client.infer(request)
            key = f"{kind}-{'raw' if raw else 'typed'}"
            report[key] = {"id": response.id, "outputs": _outputs(response)}
    try:
        await client.infer(InferRequest("nope", [_input("FP32", True, pixels, pngs)]))
    except Exception as exc:  # grpc.aio.AioRpcError
        report["unknown_model"] = [exc.code().name, exc.details()]  # type: ignore[attr-defined]
    await client.close()
    return report


if __name__ == "__main__":
    target, model, pixels_path, png_dir = sys.argv[1:5]
    images = [p.read_bytes() for p in sorted(Path(png_dir).glob("*.png"))]
    result = asyncio.run(main(target, model, np.load(pixels_path), images))
    print(json.dumps(result))
