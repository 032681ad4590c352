"""What the OpenAPI schema says beyond the handlers' signatures: request bodies that handlers
read themselves, every error answer, and /docs served from a Python package (no CDN)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

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
CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Images as multipart `file` (one) or `files` (several), or a raw image",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": _BINARY, "files": {"type": "array", "items": _BINARY}},
                }
            },
            "image/*": {"schema": _BINARY},
        },
    }
}


def install_openapi(app: FastAPI, swagger_dir: str) -> None:
    """Schemas of bodies that handlers parse themselves; Swagger UI from `swagger_dir`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            ref = "#/components/schemas/{model}"
            _, defs = models_json_schema([(InferenceRequest, "validation")], ref_template=ref)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

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
