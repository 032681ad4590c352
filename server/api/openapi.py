"""What the OpenAPI schema says beyond the handlers' signatures: request bodies that handlers
read themselves, every error answer, and /docs served from a Python package (no CDN)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.schemas.v1 import ThresholdsUpdate
from server.schemas.v2 import InferenceRequest


class ErrorBody(BaseModel):
    error: str  # what is wrong, and which setting or field to change


_WHY = {
    400: "Bad request: image, tensor, form or v2 request (v2 validation errors)",
    401: "Missing or malformed Authorization",
    403: "Wrong admin token",
    404: "Unknown model, version or path",
    405: "Method not allowed",
    408: "The request body did not arrive in time (ELF_BODY_TIMEOUT_S)",
    413: "Body, pixels or images over a limit, or more images than the queue can hold",
    415: "Unsupported Content-Type",
    422: "Bad v1 query or admin body",
    431: "Request headers over 64 KiB",
    499: "The client hung up before its request was complete (logged and counted only)",
    500: "Internal error",
    503: "Queue full or shutting down (Retry-After), or not ready",
    504: "Timed out waiting for the model",
}
ERROR_CODES = tuple(_WHY)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these codes: each `{"error": "..."}`."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_BINARY = {"type": "string", "format": "binary"}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON (Content-Type optional), or a JSON header of "
        "Inference-Header-Content-Length bytes followed by the binary tensors' bytes",
        "content": {
            "application/json": {"schema": _ref(InferenceRequest)},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}
DATATYPES = ("FP32", "BYTES")  # v2 input tensors: a pixel tensor or encoded images
BEARER = "adminToken"
THRESHOLDS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _ref(ThresholdsUpdate)}},
    },
    "security": [{BEARER: []}],
}
# An empty `files` array and no `files` field are the same multipart body: the minimum goes on
# the body (one image in `file` or `files`), not on the array.
_IMAGES = [
    {"required": ["file"]},
    {"required": ["files"], "properties": {"files": {"minItems": 1}}},
]
CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Images as multipart `file` (one) or `files` (several), or a raw image",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": _BINARY, "files": {"type": "array", "items": _BINARY}},
                    "anyOf": _IMAGES,
                    "additionalProperties": False,
                }
            },
            "image/*": {"schema": _BINARY},
        },
    }
}


@dataclass(frozen=True)
class ServedShape:
    """What the loaded models allow, for the bounds the schema states (the widest over the
    models: one model's values are exact; with several, the route's model decides the rest)."""

    model_names: tuple[str, ...]
    versions: tuple[str, ...]
    max_classes: int  # top_k's maximum
    exit_counts: tuple[int, ...]  # thresholds: K-1, or K with the last 0
    input_names: tuple[str, ...]  # v2 input tensor names
    output_names: tuple[str, ...]  # v2 outputs
    max_images: int  # images per request (ELF_MAX_IMAGES_PER_REQUEST)


def narrow(schema: dict[str, Any], shape: ServedShape) -> None:
    """Bounds that depend on the served models and settings, written into `schema`."""
    served = {"name": shape.model_names, "model_version": shape.versions}
    for path in schema["paths"].values():
        for op in path.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in served:
                    param["schema"] = param["schema"] | {"enum": list(served[param["name"]])}
        post = path.get("post", {})
        for param in post.get("parameters", []):
            if param["name"] == "top_k":
                param["schema"]["anyOf"][0]["maximum"] = shape.max_classes
        form = post.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if form is not None:
            form["schema"]["properties"]["files"]["maxItems"] = shape.max_images
    defs = schema["components"]["schemas"]
    tensor = defs["RequestInput"]["properties"]
    tensor["name"] |= {"enum": list(shape.input_names)}
    tensor["datatype"] |= {"enum": list(DATATYPES)}
    defs["RequestOutput"]["properties"]["name"] |= {"enum": list(shape.output_names)}
    update = schema["components"]["schemas"][ThresholdsUpdate.__name__]["properties"]
    update["thresholds"] = thresholds_schema(update["thresholds"]["items"], shape.exit_counts)


def thresholds_schema(item: dict[str, Any], exit_counts: tuple[int, ...]) -> dict[str, Any]:
    """K-1 thresholds, or K with the last 0, for each model's number of exits K."""
    forms: list[dict[str, Any]] = []
    for k in exit_counts:
        forms.append({"type": "array", "items": item, "minItems": k - 1, "maxItems": k - 1})
        forms.append(
            {
                "type": "array",
                "prefixItems": [item] * (k - 1),
                "items": {"type": "number", "const": 0},
                "minItems": k,
                "maxItems": k,
            }
        )
    return {"anyOf": forms, "title": "Thresholds"}


def install_openapi(
    app: FastAPI, swagger_dir: str, served: Callable[[], ServedShape | None]
) -> None:
    """Schemas of bodies that handlers parse themselves, bounds of the served models (`served`:
    None before they are loaded, then the schema is not cached); Swagger UI from `swagger_dir`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        # A copy: narrow() writes into it, and the routes' openapi_extra dicts are shared.
        schema = copy.deepcopy(get_openapi(title=app.title, version=app.version, routes=app.routes))
        ref = "#/components/schemas/{model}"
        bodies: list[tuple[type[BaseModel], Literal["validation"]]] = [
            (InferenceRequest, "validation"),
            (ThresholdsUpdate, "validation"),
        ]
        _, defs = models_json_schema(bodies, ref_template=ref)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs["$defs"])
        components["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
        shape = served()
        if shape is not None:
            narrow(schema, shape)
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount("/docs/static", StaticFiles(directory=swagger_dir), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
