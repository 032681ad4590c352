"""v1: classify images (multipart `file`/`files` or a raw image/* body) and describe models."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from server.api.classify_route import (
    CLASSIFY_ERRORS,
    ClassifyQuery,
    DirectRoute,
    openapi_parameters,
    parse_query,
)
from server.api.openapi import error_responses
from server.app_state import AppState, get_state
from server.preprocess import InputError
from server.registry import ServedModel
from server.schemas.v1 import (
    ClassifyResponse,
    ExitDetail,
    ModelDetail,
    ModelList,
    ModelSummary,
)
from server.service import Answer, classify, decode
from server.settings import Settings

router = APIRouter(prefix="/v1", tags=["v1"], responses=error_responses(404))

StateDep = Annotated[AppState, Depends(get_state)]


async def read_images(request: Request, settings: Settings) -> list[tuple[str, bytes]]:
    """The request's images as (name, bytes): multipart `file`/`files`, or a raw image/* body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/"):
        return [("body", await request.body())]
    if ctype != "multipart/form-data":
        raise InputError(
            f"unsupported Content-Type {ctype or '(none)'!r}: send multipart/form-data with "
            "'file' or 'files' fields, or a raw image/* body",
            415,
            "bad_content_type",
        )
    form = await request.form(max_files=settings.max_images_per_request, max_fields=16)
    unknown = sorted(set(form.keys()) - {"file", "files"})
    if unknown:
        raise InputError(f"unexpected form fields {unknown}: images go in 'file' or 'files'")
    items = [("file", f) for f in form.getlist("file")]
    files = form.getlist("files")
    items += [(f"files[{i}]" if len(files) > 1 else "files", f) for i, f in enumerate(files)]
    if not items:
        raise InputError("no image: send multipart field 'file' or 'files'")
    out = []
    for name, item in items:
        if not isinstance(item, UploadFile):
            raise InputError(f"{name}: a text field, not a file upload")
        label = f"{name} ({item.filename})" if item.filename else name
        out.append((label, await item.read()))
    return out


def _prediction(
    i: int, name: str, a: Answer, model: ServedModel, *, top_k: int, total_ms: float
) -> dict[str, Any]:
    """One `Prediction` as the dict its JSON is written from (the hot path: building the
    pydantic models and serialising them was a visible share of a small model's event-loop
    time)."""
    names, full = model.manifest.class_names, model.manifest.flops_full
    probs = a.probs
    order = np.argsort(-probs, kind="stable")[:top_k].tolist()
    return {
        "index": i,
        "name": name,
        "label": names[a.class_index],
        "class_index": a.class_index,
        "confidence": a.confidence,
        "top_k": [
            {"label": names[c], "class_index": c, "confidence": float(probs[c])} for c in order
        ],
        "exit": {"index": a.exit_index, "count": model.num_exits, "threshold": a.threshold},
        "flops": {
            "executed": a.flops_executed,
            "full": full,
            "saved_ratio": 1 - a.flops_executed / full,
        },
        "timings": {"queue_ms": a.queue_ms, "compute_ms": a.compute_ms, "total_ms": total_ms},
    }


async def _classify(
    request: Request, state: AppState, name: str | None, q: ClassifyQuery
) -> dict[str, Any]:
    """A `ClassifyResponse` as a dict (tests/server check it validates against the model)."""
    start = time.perf_counter()
    with state.models.lease(name) as model:  # the newest version, held until answered
        num_classes = len(model.manifest.class_names)
        if q.top_k is not None and q.top_k > num_classes:
            raise InputError(f"top_k={q.top_k} but {model.name} has {num_classes} classes", 422)
        images = await read_images(request, state.settings)
        arrays = await decode(images, model, state.settings)
        answers = await classify(state, model, arrays, q.threshold, q.mode)
    total_ms = (time.perf_counter() - start) * 1e3
    k = q.top_k or min(5, num_classes)
    results = [
        _prediction(i, images[i][0], a, model, top_k=k, total_ms=total_ms)
        for i, a in enumerate(answers)
    ]
    return {"model": model.name, "version": model.manifest.version, "results": results}


def json_response(body: BaseModel, exclude_none: bool = False) -> Response:
    """Serialised once by pydantic-core (returning the model makes FastAPI validate it again)."""
    return Response(body.model_dump_json(exclude_none=exclude_none), media_type="application/json")


def dict_response(body: dict[str, Any]) -> Response:
    """A dict built to a response model's shape, serialised by orjson (the same JSON as
    pydantic-core writes for that model: compact, UTF-8, NaN and infinities as null)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


async def classify_default(request: Request) -> Response:
    """Classify with the default model."""
    q = parse_query(request)
    return dict_response(await _classify(request, request.app.state.elf, None, q))


async def classify_with(request: Request) -> Response:
    q = parse_query(request)
    name: str = request.path_params["name"]
    return dict_response(await _classify(request, request.app.state.elf, name, q))


# The hot path: DirectRoute calls these with the Request alone (server.api.classify_route).
for _path, _endpoint, _params in (
    ("/classify", classify_default, ()),
    ("/models/{name}/classify", classify_with, ("name",)),
):
    router.add_api_route(
        _path,
        _endpoint,
        methods=["POST"],
        response_model=ClassifyResponse,
        responses=CLASSIFY_ERRORS,
        route_class_override=DirectRoute,
        openapi_extra=openapi_parameters(*_params),
    )


def summary(model: ServedModel, default: str) -> ModelSummary:
    return ModelSummary(
        name=model.name,
        version=model.manifest.version,
        default=model.name == default,
        num_classes=len(model.manifest.class_names),
        num_exits=model.num_exits,
        providers=model.providers,
        device=model.runner.device,
        warnings=model.warnings,
        thresholds=list(model.thresholds),
    )


@router.get("/models", response_model=ModelList)
async def list_models(state: StateDep) -> ModelList:
    reg = state.models
    models = [summary(m, reg.default) for m in reg.models.values()]
    return ModelList(default=reg.default, models=models)


@router.get("/models/{name}", response_model=ModelDetail)
async def describe_model(name: str, state: StateDep) -> ModelDetail:
    model = state.models.get(name)
    m, s = model.manifest, state.settings
    exits = [
        ExitDetail(
            index=e.index,
            threshold=model.thresholds[e.index],
            calibrated_threshold=e.threshold,
            cumulative_flops=e.cumulative_flops,
            flops_ratio=e.cumulative_flops / m.flops_full,
        )
        for e in m.exits
    ]
    return ModelDetail(
        **summary(model, state.models.default).model_dump(),
        class_names=m.class_names,
        preprocessing=m.preprocessing.model_dump(),
        exits=exits,
        flops_full=m.flops_full,
        flops_convention=m.flops_convention,
        calibration=m.calibration.model_dump() if m.calibration else None,
        calibration_curve=model.curve,
        expected_agreement=model.agreement.model_dump() if model.agreement else None,
        provenance=m.provenance.model_dump(),
        batching={
            "max_batch_size": s.max_batch_size,
            "batch_cap": model.batcher.max_batch_size,
            "max_queue_delay_ms": s.max_queue_delay_ms,
            "max_queue_size": s.max_queue_size,
        },
        batch_cap=asdict(model.batch_cap) if model.batch_cap is not None else None,
    )
