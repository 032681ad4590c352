"""The Open Inference Protocol's data plane, shared by HTTP/REST (server/api/v2.py) and gRPC
(server/grpc/): which model, its metadata, the request's tensor -> images -> classify -> the
output tensors. Each transport only turns its wire format into an InferenceRequest (plus the
bytes of its binary inputs) and the InferenceResponse back into its wire format.

Input: one tensor named as the model's stage-0 input ("input"), either FP32 [N, C, H, W] or
BYTES [N] (or [N, 1]) of image files (PNG, JPEG, ...; base64 strings in JSON, raw bytes in
binary form). Parameters: "threshold" (number in [0, 1]) and "exit" ("auto" | "final").
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from server.api.v2_binary import binary_inputs, bytes_elements, fp32_tensor
from server.app_state import AppState
from server.preprocess import InputError, tensor_input
from server.registry import ServedModel
from server.schemas.v2 import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestInput,
    ResponseOutput,
    TensorMetadata,
)
from server.service import Answer, classify, decode

OUTPUTS = ("label", "class_index", "confidence", "exit_index", "flops_executed", "probabilities")
EXTENSIONS = ["binary_tensor_data"]  # server.api.v2_binary
SERVER_NAME = "elf-serving"


def server_version() -> str:
    try:
        return version("elf-serving")
    except PackageNotFoundError:
        return "0.0.0"


def served_model(state: AppState, name: str, model_version: str | None) -> ServedModel:
    """The model `name` at `model_version`, or its newest served version (else 404)."""
    return state.models.get(name, model_version)


def model_metadata(model: ServedModel, versions: list[str]) -> ModelMetadata:
    """`versions`: the name's served versions (the protocol lists them all)."""
    pre, c = model.manifest.preprocessing, len(model.manifest.class_names)
    shapes = {"probabilities": [-1, c]}
    types = {"label": "BYTES", "confidence": "FP32", "probabilities": "FP32"}
    return ModelMetadata(
        name=model.name,
        versions=versions,
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


def _encoded_images(inp: RequestInput, raw: bytes | None) -> list[tuple[str, bytes]]:
    shape, data = inp.shape, inp.data
    if raw is not None:
        data = bytes_elements(raw, inp.name)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or not isinstance(data, list):
        raise InputError(f"{inp.name}: BYTES images need shape [N] or [N, 1] and a data list")
    flat = [d[0] if isinstance(d, list) and len(d) == 1 else d for d in data]
    if len(flat) != shape[0]:
        raise InputError(f"{inp.name}: shape says {shape[0]} images, data holds {len(flat)}")
    if raw is not None:  # binary elements are the image files themselves
        return [(f"{inp.name}[{i}]", item) for i, item in enumerate(flat)]
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


async def _arrays(
    req: InferenceRequest, tail: bytes, model: ServedModel, state: AppState
) -> list[Any]:
    if len(req.inputs) != 1:
        raise InputError(
            f"exactly one input tensor expected, got {len(req.inputs)}", reason="bad_tensor"
        )
    inp, want = req.inputs[0], model.manifest.stages[0].input.name
    if inp.name != want:
        raise InputError(
            f"unknown input {inp.name!r}; this model's input is {want!r}", reason="bad_tensor"
        )
    raw = binary_inputs(req, tail).get(inp.name)
    if inp.datatype == "FP32":
        data = inp.data if raw is None else fp32_tensor(raw, inp.shape, inp.name)
        return tensor_input(data, inp.shape, model.manifest.preprocessing, inp.name)
    if inp.datatype == "BYTES":
        return await decode(_encoded_images(inp, raw), model, state.settings)
    raise InputError(
        f"{inp.name}: datatype {inp.datatype!r} is not supported; send FP32 (an NCHW tensor) "
        "or BYTES (base64-encoded images)",
        reason="bad_tensor",
    )


def _requested(req: InferenceRequest) -> tuple[list[str], set[str]]:
    """The outputs to answer, and those of them to send in binary form."""
    all_binary = req.parameters is not None and req.parameters.binary_data_output
    if req.outputs is None:
        return list(OUTPUTS), set(OUTPUTS) if all_binary else set()
    names = [o.name for o in req.outputs]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InputError(f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    binary = {
        o.name for o in req.outputs if all_binary or (o.parameters and o.parameters.binary_data)
    }
    return names, binary


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


async def infer(
    state: AppState, model: ServedModel, req: InferenceRequest, tail: bytes, start: float
) -> tuple[InferenceResponse, set[str]]:
    """Classify the request's images; the response and the outputs asked for in binary form.
    `tail` holds the binary inputs (those with `binary_data_size`), in input order."""
    params = req.parameters
    threshold, mode = (params.threshold, params.exit) if params else (None, "auto")
    requested, binary = _requested(req)
    arrays = await _arrays(req, tail, model, state)
    answers = await classify(state, model, arrays, threshold, mode)
    full, executed = model.manifest.flops_full, sum(a.flops_executed for a in answers)
    out: Parameters = {
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
        parameters=out,
        outputs=[_tensor(o, answers, model) for o in requested],
    )
    return response, binary
