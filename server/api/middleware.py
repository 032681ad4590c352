"""Pure ASGI middleware: request metrics by route template, and the request body size limit."""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.metrics import Metrics

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The path template ("/v1/models/{name}/classify"), never the raw path (cardinality)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class BodyTooLargeError(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through as it is (413)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
            m, route = self.metrics, route_template(scope)
            m.child(m.requests, route, str(status)).inc()
            m.child(m.request_duration, route).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 when Content-Length or the bytes actually received exceed `max_bytes`.

    The limit is enforced when a handler reads the body (after routing, so the request keeps its
    route label), before any byte is read when Content-Length already says too much.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> BodyTooLargeError:
        limit = self.max_bytes
        return BodyTooLargeError(
            f"request body of {size} bytes exceeds the limit of {limit} (ELF_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_big = declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def limited() -> Message:
            nonlocal received
            if too_big:
                raise self._error(declared.decode())
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"more than {received - len(message.get('body', b''))}")
            return message

        await self.app(scope, limited, send)
