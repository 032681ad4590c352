"""/v1 classify routes without FastAPI's per-request dependency solving.

Solving dependencies and query parameters took more of the event loop's time per request on a
small model than decoding the image (bench/profile_server.py). These routes stay
APIRoutes (documented in OpenAPI, `scope["route"]` set for the metrics' route label), but their
endpoint takes the Request alone: the app state comes from `request.app.state`, and the query is
validated by one cached pydantic model with the same field types and bounds that `Query(...)`
declared, so the values accepted and the 422 messages (`query.threshold: ...`) are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.api.openapi import CLASSIFY_BODY, error_responses
from server.registry import ExitMode


@dataclass(frozen=True)
class ClassifyQuery:
    threshold: float | None
    top_k: int | None
    mode: ExitMode


DEFAULT_QUERY = ClassifyQuery(None, None, "auto")


class _QueryModel(BaseModel):
    """What the query may hold; unknown parameters are ignored, as FastAPI ignores them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="One confidence threshold for every auxiliary exit",
    )
    top_k: int | None = Field(None, ge=1, description="Classes listed per image (default 5)")
    exit: Literal["auto", "final"] = Field("auto", description="auto: early exits; final: none")


def parse_query(request: Request) -> ClassifyQuery:
    """The v1 classify query; RequestValidationError (422, as before) naming each bad value."""
    if not request.scope.get("query_string"):
        return DEFAULT_QUERY  # the common case: nothing to validate
    try:
        q = _QueryModel.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None
    return ClassifyQuery(q.threshold, q.top_k, q.exit)


def openapi_parameters(*path_params: str) -> dict[str, Any]:
    """OpenAPI of the parameters, as FastAPI wrote it when the signatures declared them."""
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string", "title": "Name"}}
        for p in path_params
    ]
    for name, schema in _QueryModel.model_json_schema()["properties"].items():
        doc = schema["description"]
        params.append(
            {"name": name, "in": "query", "required": False, "schema": schema, "description": doc}
        )
    return {"parameters": params, **CLASSIFY_BODY}


CLASSIFY_ERRORS = error_responses(400, 404, 408, 413, 415, 422, 499, 503, 504)


Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is called with the Request alone (no dependency solving)."""

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint
