"""Prototype for the profile's main proposal: /v1/classify without FastAPI's dependency layer.

A plain Starlette route placed in front of the app's own one, doing what the FastAPI handler
does (server.api.v1._classify) with the query string parsed by hand. Only for measuring the
gain (bench.profile_server --target elf-lean); the server itself is unchanged. Errors still go
through the app's exception handlers; the request metrics label this route "unmatched".
"""

from __future__ import annotations

from typing import cast

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.v1 import ClassifyQuery, _classify, json_response
from server.models import ExitMode
from server.preprocess import InputError
from server.state import AppState


def parse_query(request: Request) -> ClassifyQuery:
    """threshold in [0, 1], top_k >= 1, exit in auto|final; 422 naming the problem otherwise."""
    params = request.query_params
    try:
        threshold = float(params["threshold"]) if "threshold" in params else None
        top_k = int(params["top_k"]) if "top_k" in params else None
    except ValueError as exc:
        raise InputError(f"bad query parameter: {exc}", 422, "bad_query") from None
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must lie in [0, 1], got {threshold}", 422, "bad_query")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}", 422, "bad_query")
    mode = params.get("exit", "auto")
    if mode not in ("auto", "final"):
        raise InputError(f"exit must be auto or final, got {mode!r}", 422, "bad_query")
    return ClassifyQuery(threshold, top_k, cast(ExitMode, mode))


def install(app: FastAPI) -> FastAPI:
    async def classify(request: Request) -> Response:
        state: AppState = request.app.state.elf
        return json_response(await _classify(request, state, None, parse_query(request)))

    app.router.routes.insert(0, Route("/v1/classify", classify, methods=["POST"]))
    return app
