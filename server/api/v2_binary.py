"""The Open Inference Protocol's binary tensor data extension (HTTP/REST).

A request may be a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
bytes of the inputs whose parameters give `binary_data_size`, in input order. FP32 data is
little-endian float32, row-major; each BYTES element is a 4-byte little-endian length and then
its bytes. A response carries the outputs asked for with `binary_data` (or all, with the request
parameter `binary_data_output`) the same way, and says so with the same header.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from server.api.middleware import byte_count
from server.preprocess import InputError
from server.schemas.v2 import InferenceRequest, InferenceResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
_NUMPY = {"FP32": "<f4", "INT64": "<i8"}


async def read_infer_request(request: Request) -> tuple[InferenceRequest, bytes]:
    """The request's JSON header (with or without Content-Type) and the bytes after it."""
    body = await request.body()
    declared = request.headers.get(HEADER_LENGTH)
    size = len(body)
    if declared is not None:
        count = byte_count(declared)
        if count is None or count > len(body):
            raise InputError(
                f"{HEADER_LENGTH}: {declared[:40]!r} is not a byte count within the "
                f"{len(body)}-byte body"
            )
        size = count
    try:
        req = InferenceRequest.model_validate_json(body[:size])
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None
    return req, body[size:]


def binary_inputs(req: InferenceRequest, tail: bytes) -> dict[str, bytes]:
    """Each binary input's bytes, by name, cut from `tail` in input order."""
    out, offset = {}, 0
    for inp in req.inputs:
        size = inp.parameters.binary_data_size if inp.parameters else None
        if size is None:
            continue
        if inp.data is not None:
            raise InputError(f"{inp.name}: both data and binary_data_size; send one")
        if offset + size > len(tail):
            raise InputError(
                f"{inp.name}: binary_data_size {size} goes past the {len(tail)} bytes "
                f"after the JSON header ({HEADER_LENGTH})"
            )
        out[inp.name] = tail[offset : offset + size]
        offset += size
    if offset != len(tail):
        raise InputError(
            f"{len(tail) - offset} bytes after the JSON header belong to no input "
            f"(check {HEADER_LENGTH} and each binary_data_size)"
        )
    return out


def fp32_tensor(raw: bytes, shape: Sequence[int], name: str) -> np.ndarray:
    """Little-endian float32 bytes -> an array of `shape`."""
    want = 4 * math.prod(shape)
    if len(raw) != want:
        raise InputError(
            f"{name}: {len(raw)} bytes of FP32 data; shape {list(shape)} needs {want}",
            reason="bad_tensor",
        )
    return np.frombuffer(raw, dtype="<f4").reshape(shape)


def bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """A binary BYTES tensor: elements of a 4-byte little-endian length, then the bytes."""
    out: list[bytes] = []
    i = 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InputError(f"{name}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise InputError(f"{name}[{len(out)}]: element of {n} bytes runs past the data")
        out.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def tensor_bytes(datatype: str, data: list[Any]) -> bytes:
    """A tensor's data in binary form (also gRPC's raw_output_contents)."""
    if datatype == "BYTES":
        items = [d if isinstance(d, bytes) else str(d).encode() for d in data]
        return b"".join(struct.pack("<I", len(d)) + d for d in items)
    return np.asarray(data, dtype=_NUMPY[datatype]).tobytes()


def infer_response(resp: InferenceResponse, binary: set[str]) -> Response:
    """JSON alone, or the JSON header then the outputs named in `binary` as raw bytes."""
    if not binary:
        return Response(resp.model_dump_json(exclude_none=True), media_type="application/json")
    blobs, outputs = [], []
    for out in resp.outputs:
        if out.name not in binary or out.data is None:
            outputs.append(out)
            continue
        blobs.append(tensor_bytes(out.datatype, out.data))
        params = {**(out.parameters or {}), "binary_data_size": len(blobs[-1])}
        outputs.append(out.model_copy(update={"data": None, "parameters": params}))
    header = resp.model_copy(update={"outputs": outputs}).model_dump_json(exclude_none=True)
    head = header.encode()
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )
