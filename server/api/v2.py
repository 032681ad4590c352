"""KServe v2 / Open Inference Protocol over HTTP/REST (kserve's required_api, JSON tensors).

Input: one tensor named as the model's stage-0 input ("input"), either FP32 [N, C, H, W] (data
flat row-major or nested) or BYTES [N] (or [N, 1]) of base64-encoded image files (PNG, JPEG, ...).
Request parameters (optional): "threshold" (number in [0, 1]) and "exit" ("auto" | "final").
Outputs: label (BYTES), class_index, exit_index, flops_executed (INT64), confidence (FP32),
probabilities (FP32 [N, C]); "outputs" in the request selects some. Response parameters carry
exit_count, flops_full (per image), flops_executed (all images), flops_saved_ratio and
exit_indices (comma-separated, as parameters are scalars). Errors: {"error": "..."} with 400
(404 unknown model, 413 too big, 503 busy, 504 timeout).
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from server.api.v1 import StateDep, json_response
from server.preprocess import InputError, tensor_input
from server.registry import ExitMode, ServedModel, UnknownModelError
from server.schemas.v2 import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from server.service import Answer, classify, decode
from server.state import AppState

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
OUTPUTS = ("label", "class_index", "confidence", "exit_index", "flops_executed", "probabilities")


def _server_version() -> str:
    try:
        return version("elf-serving")
    except PackageNotFoundError:
        return "0.0.0"


def _model(state: AppState, name: str, model_version: str | None) -> ServedModel:
    model = state.models.get(name)
    if model_version is not None and model_version != model.manifest.version:
        raise UnknownModelError(
            f"model {name!r} has version {model.manifest.version!r}, not {model_version!r}"
        )
    return model


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="elf-serving", version=_server_version(), extensions=[])


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(state: StateDep) -> JSONResponse:
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


def _metadata(model: ServedModel) -> ModelMetadata:
    pre, c = model.manifest.preprocessing, len(model.manifest.class_names)
    shapes = {"probabilities": [-1, c]}
    types = {"label": "BYTES", "confidence": "FP32", "probabilities": "FP32"}
    return ModelMetadata(
        name=model.name,
        versions=[model.manifest.version],
        platform="onnxruntime_onnx",
        inputs=[
            TensorMetadata(
                name=model.manifest.stages[0].input.name,
                datatype="FP32",
                shape=[-1, pre.channels, pre.height, pre.width],
            )
        ],
        outputs=[
            TensorMetadata(name=o, datatype=types.get(o, "INT64"), shape=shapes.get(o, [-1]))
            for o in OUTPUTS
        ],
    )


@router.get("/models/{name}", response_model=ModelMetadata)
@router.get("/models/{name}/versions/{model_version}", response_model=ModelMetadata)
async def model_metadata(
    name: str, state: StateDep, model_version: str | None = None
) -> ModelMetadata:
    return _metadata(_model(state, name, model_version))


@router.get("/models/{name}/ready", response_model=ModelReady)
@router.get("/models/{name}/versions/{model_version}/ready", response_model=ModelReady)
async def model_ready(name: str, state: StateDep, model_version: str | None = None) -> JSONResponse:
    model = _model(state, name, model_version)
    return JSONResponse({"name": model.name, "ready": state.ready}, 200 if state.ready else 503)


def _parameters(params: Parameters | None) -> tuple[float | None, ExitMode]:
    params = params or {}
    threshold = params.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool | str) or not 0.0 <= float(threshold) <= 1.0
    ):
        raise InputError(f"parameters.threshold must be a number in [0, 1], got {threshold!r}")
    mode = params.get("exit", "auto")
    if mode not in ("auto", "final"):
        raise InputError(f"parameters.exit must be 'auto' or 'final', got {mode!r}")
    return (None if threshold is None else float(threshold)), mode  # type: ignore[return-value]


def _encoded_images(inp: RequestInput) -> list[tuple[str, bytes]]:
    shape, data = inp.shape, inp.data
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or not isinstance(data, list):
        raise InputError(f"{inp.name}: BYTES images need shape [N] or [N, 1] and a data list")
    flat = [d[0] if isinstance(d, list) and len(d) == 1 else d for d in data]
    if len(flat) != shape[0]:
        raise InputError(f"{inp.name}: shape says {shape[0]} images, data holds {len(flat)}")
    out = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InputError(
                f"{inp.name}[{i}]: expected a base64 string, got {type(item).__name__}"
            )
        try:
            out.append((f"{inp.name}[{i}]", base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            raise InputError(f"{inp.name}[{i}]: not valid base64") from None
    return out


async def _arrays(req: InferenceRequest, model: ServedModel, state: AppState) -> list[Any]:
    if len(req.inputs) != 1:
        raise InputError(
            f"exactly one input tensor expected, got {len(req.inputs)}", reason="bad_tensor"
        )
    inp, want = req.inputs[0], model.manifest.stages[0].input.name
    if inp.name != want:
        raise InputError(
            f"unknown input {inp.name!r}; this model's input is {want!r}", reason="bad_tensor"
        )
    if inp.parameters and "binary_data_size" in inp.parameters:
        raise InputError("the binary tensor data extension is not supported; send JSON data")
    if inp.datatype == "FP32":
        return tensor_input(inp.data, inp.shape, model.manifest.preprocessing, inp.name)
    if inp.datatype == "BYTES":
        return await decode(_encoded_images(inp), model, state.settings)
    raise InputError(
        f"{inp.name}: datatype {inp.datatype!r} is not supported; send FP32 (an NCHW tensor) "
        "or BYTES (base64-encoded images)",
        reason="bad_tensor",
    )


def _requested(outputs: list[RequestOutput] | None) -> list[str]:
    if outputs is None:
        return list(OUTPUTS)
    names = [o.name for o in outputs]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InputError(f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    if any(o.parameters and o.parameters.get("binary_data") for o in outputs):
        raise InputError("the binary tensor data extension is not supported")
    return names


def _tensor(name: str, answers: list[Answer], model: ServedModel) -> ResponseOutput:
    n, names = len(answers), model.manifest.class_names
    columns: dict[str, tuple[str, list[Any]]] = {
        "label": ("BYTES", [names[a.class_index] for a in answers]),
        "class_index": ("INT64", [a.class_index for a in answers]),
        "confidence": ("FP32", [a.confidence for a in answers]),
        "exit_index": ("INT64", [a.exit_index for a in answers]),
        "flops_executed": ("INT64", [a.flops_executed for a in answers]),
    }
    if name == "probabilities":
        data = [float(p) for a in answers for p in a.probs]
        return ResponseOutput(name=name, shape=[n, len(names)], datatype="FP32", data=data)
    datatype, data = columns[name]
    return ResponseOutput(name=name, shape=[n], datatype=datatype, data=data)


@router.post(
    "/models/{name}/infer", response_model=InferenceResponse, response_model_exclude_none=True
)
@router.post(
    "/models/{name}/versions/{model_version}/infer",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
)
async def infer(
    name: str, req: InferenceRequest, state: StateDep, model_version: str | None = None
) -> Response:
    start = time.perf_counter()
    model = _model(state, name, model_version)
    threshold, mode = _parameters(req.parameters)
    requested = _requested(req.outputs)
    answers = await classify(state, model, await _arrays(req, model, state), threshold, mode)
    full, executed = model.manifest.flops_full, sum(a.flops_executed for a in answers)
    params: Parameters = {
        "exit_count": model.num_exits,
        "exit_indices": ",".join(str(a.exit_index) for a in answers),
        "flops_full": full,
        "flops_executed": executed,
        "flops_saved_ratio": 1 - executed / (full * len(answers)),
        "total_ms": (time.perf_counter() - start) * 1e3,
    }
    response = InferenceResponse(
        model_name=model.name,
        model_version=model.manifest.version,
        id=req.id if req.id is not None else str(uuid.uuid4()),
        parameters=params,
        outputs=[_tensor(o, answers, model) for o in requested],
    )
    return json_response(response, exclude_none=True)
