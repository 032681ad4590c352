"""KServe v2 / Open Inference Protocol over HTTP/REST (kserve's required_api, JSON tensors); the
data plane (tensors -> classify -> outputs) is server/open_inference.py, shared with gRPC.

Input: one tensor named as the model's stage-0 input ("input"), either FP32 [N, C, H, W] (data
flat row-major or nested) or BYTES [N] (or [N, 1]) of base64-encoded image files (PNG, JPEG, ...).
Request parameters (optional): "threshold" (number in [0, 1]) and "exit" ("auto" | "final").
The binary tensor data extension works both ways (server.api.v2_binary); a JSON request needs
no Content-Type.
Outputs: label (BYTES), class_index, exit_index, flops_executed (INT64), confidence (FP32),
probabilities (FP32 [N, C]); "outputs" in the request selects some. Response parameters carry
exit_count, flops_full (per image), flops_executed (all images), flops_saved_ratio and
exit_indices (comma-separated, as parameters are scalars). Errors: {"error": "..."} with 400
(404 unknown model, 413 too big, 503 busy, 504 timeout; server.api.openapi lists them).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server import open_inference as oip
from server.api.openapi import INFER_BODY, error_responses
from server.api.v1 import StateDep
from server.api.v2_binary import infer_response, read_infer_request
from server.app_state import AppState
from server.open_inference import EXTENSIONS, OUTPUTS, SERVER_NAME, served_model, server_version
from server.schemas.v2 import InferenceResponse, ModelMetadata, ModelReady, ServerMetadata

router = APIRouter(prefix="/v2", tags=["kserve-v2"], responses=error_responses(400, 404, 503))
__all__ = ["OUTPUTS", "router"]


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(state: StateDep) -> JSONResponse:
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


# Each route with and without /versions/{model_version}: separate functions, so that the
# unversioned route takes no model_version at all (not even as a query parameter).
@router.get("/models/{name}", response_model=ModelMetadata)
async def model_metadata(name: str, state: StateDep) -> ModelMetadata:
    return _metadata(state, name, None)


@router.get("/models/{name}/versions/{model_version}", response_model=ModelMetadata)
async def model_version_metadata(name: str, model_version: str, state: StateDep) -> ModelMetadata:
    return _metadata(state, name, model_version)


def _metadata(state: AppState, name: str, version: str | None) -> ModelMetadata:
    model = served_model(state, name, version)
    return oip.model_metadata(model, state.models.versions(model.name))


@router.get("/models/{name}/ready", response_model=ModelReady)
async def model_ready(name: str, state: StateDep) -> JSONResponse:
    return _ready(state, name, None)


@router.get("/models/{name}/versions/{model_version}/ready", response_model=ModelReady)
async def model_version_ready(name: str, model_version: str, state: StateDep) -> JSONResponse:
    return _ready(state, name, model_version)


def _ready(state: AppState, name: str, version: str | None) -> JSONResponse:
    model = served_model(state, name, version)
    return JSONResponse({"name": model.name, "ready": state.ready}, 200 if state.ready else 503)


_INFER = {
    "response_model": InferenceResponse,
    "response_model_exclude_none": True,
    "openapi_extra": INFER_BODY,
    "responses": error_responses(408, 413, 499, 504),
}


# The body is read here, not by FastAPI: a client may send no Content-Type, or a binary tail.
@router.post("/models/{name}/infer", **_INFER)  # type: ignore[arg-type]
async def infer(name: str, request: Request, state: StateDep) -> Response:
    return await _infer(state, request, name, None)


@router.post("/models/{name}/versions/{model_version}/infer", **_INFER)  # type: ignore[arg-type]
async def infer_version(
    name: str, model_version: str, request: Request, state: StateDep
) -> Response:
    return await _infer(state, request, name, model_version)


async def _infer(state: AppState, request: Request, name: str, version: str | None) -> Response:
    start = time.perf_counter()
    with state.models.lease(name, version) as model:  # held until answered
        req, tail = await read_infer_request(request)
        response, binary = await oip.infer(state, model, req, tail, start)
    return infer_response(response, binary)
