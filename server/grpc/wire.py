"""gRPC messages <-> the data plane's InferenceRequest / InferenceResponse (server/schemas/v2).

Every input reaches the data plane in binary form: `raw_input_contents[i]` as it is, typed
contents (`fp32_contents`, `bytes_contents`) packed the same way (little-endian float32; each
BYTES element a 4-byte little-endian length and its bytes), so the rules that check and read a
tensor live once (server/open_inference.py). Outputs go back in `raw_output_contents`, as
Triton answers.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from server.api.v2_binary import tensor_bytes
from server.grpc.proto import grpc_service_pb2 as pb
from server.preprocess import InputError
from server.schemas.v2 import InferenceRequest, InferenceResponse, ModelMetadata

Scalar = str | int | float | bool


def _value(param: pb.InferParameter) -> Scalar:
    which = param.WhichOneof("parameter_choice")
    if which is None:
        raise InputError("a parameter without a value")
    value: Scalar = getattr(param, which)
    return value


def _set(param: pb.InferParameter, value: Scalar) -> None:
    if isinstance(value, bool):  # before int: bool is an int
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def _typed_bytes(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    contents = tensor.contents
    if tensor.datatype == "FP32":
        return np.asarray(contents.fp32_contents, dtype="<f4").tobytes()
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in contents.bytes_contents)
    return b""  # the data plane refuses the datatype, naming the ones it takes


def infer_request(msg: pb.ModelInferRequest) -> tuple[InferenceRequest, bytes]:
    """The request and its inputs' bytes in input order (each with its binary_data_size).
    pydantic's ValidationError for a bad parameter value (server/grpc/errors.py)."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InputError(
            f"raw_input_contents holds {len(raw)} tensors for {len(msg.inputs)} inputs; "
            "send one per input, in input order",
            reason="bad_tensor",
        )
    inputs, blobs = [], []
    for i, tensor in enumerate(msg.inputs):
        if raw and tensor.HasField("contents"):
            raise InputError(f"{tensor.name}: both contents and raw_input_contents; send one")
        blobs.append(raw[i] if raw else _typed_bytes(tensor))
        inputs.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": {"binary_data_size": len(blobs[-1])},
            }
        )
    body: dict[str, Any] = {"inputs": inputs}
    if msg.id:
        body["id"] = msg.id
    if msg.parameters:
        body["parameters"] = {k: _value(v) for k, v in msg.parameters.items()}
    if msg.outputs:
        body["outputs"] = [{"name": o.name} for o in msg.outputs]
    return InferenceRequest.model_validate(body), b"".join(blobs)


def infer_response(resp: InferenceResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version or "", id=resp.id
    )
    for key, value in (resp.parameters or {}).items():
        _set(msg.parameters[key], value)
    for out in resp.outputs:
        msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        msg.raw_output_contents.append(tensor_bytes(out.datatype, out.data or []))
    return msg


def metadata_response(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(items: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
            for t in items
        ]

    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=tensors(meta.inputs),
        outputs=tensors(meta.outputs),
    )
