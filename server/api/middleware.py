"""Pure ASGI middleware: request metrics by route template, and the request body size limit."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import error_response
from server.metrics import Metrics
from server.preprocess import InputError

UNMATCHED = "unmatched"


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The path template ("/v1/models/{name}/classify"), never the raw path (cardinality)."""
    route = scope.get("route")
    if route is None:  # refused before routing (413 on Content-Length): match it ourselves
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope, self.routes)
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 when Content-Length or the bytes actually received exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _message(self, size: int | str) -> str:
        limit = self.max_bytes
        return f"request body of {size} bytes exceeds the limit of {limit} (ELF_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            self.metrics.rejected.labels(reason="body_too_large").inc()
            await error_response(413, self._message(int(declared)))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise InputError(self._message(f"more than {received}"), 413, "body_too_large")
            return message

        await self.app(scope, limited, send)
