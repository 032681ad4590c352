"""Pure ASGI middleware: request metrics by route template, and the request body's limits in
size (413) and time (408); a client gone mid-body becomes a 499 (logged, counted, not an error)."""

from __future__ import annotations

import asyncio
import re
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.metrics import Metrics

UNMATCHED = "unmatched"
# A byte count in a header: ASCII digits only (str.isdigit() also takes "²", which int() refuses),
# and at most 18 of them (int() refuses more than 4,300; 10**18 bytes is past any body).
_BYTE_COUNT = re.compile(r"[0-9]{1,18}")


def byte_count(text: str | bytes) -> int | None:
    """The header value as a byte count, or None when it is not one (the caller answers 400)."""
    value = text.decode("latin-1") if isinstance(text, bytes) else text
    return int(value) if _BYTE_COUNT.fullmatch(value.strip()) else None


def route_template(scope: Scope) -> str:
    """The path template ("/v1/models/{name}/classify"), never the raw path (cardinality)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class BodyTooLargeError(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through as it is (413)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyTimeoutError(StarletteHTTPException):
    def __init__(self, timeout_s: float) -> None:
        detail = f"the request body did not arrive within {timeout_s:g} s (ELF_BODY_TIMEOUT_S)"
        super().__init__(408, detail, {"Connection": "close"})


class BodyCancelledError(StarletteHTTPException):
    """uvicorn cancels what is still running when its graceful shutdown times out; a request
    still waiting for its body then gets a 503 and one log line, not a CancelledError traceback."""

    def __init__(self) -> None:
        super().__init__(503, "the server shut down while the request body was arriving")


class ClientGoneError(StarletteHTTPException):
    """499 (nginx's "client closed request"): nobody reads it; it is counted and logged."""

    def __init__(self) -> None:
        super().__init__(499, "the client hung up before its request body was complete")


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
            m.child(m.requests, route, str(status), "http").inc()
            m.child(m.request_duration, route, "http").observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 when Content-Length or the bytes actually received exceed `max_bytes`; 408 when the
    body has not fully arrived `timeout_s` after the handler started reading it.

    The limits are enforced when a handler reads the body (after routing, so the request keeps
    its route label), before any byte is read when Content-Length already says too much.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _error(self, size: str) -> BodyTooLargeError:
        limit = self.max_bytes
        return BodyTooLargeError(
            f"request body of {size} bytes exceeds the limit of {limit} (ELF_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        count = byte_count(declared)
        too_big = count is not None and count > self.max_bytes
        has_body = bool(count) or b"transfer-encoding" in headers
        received, complete, deadline, started = 0, False, 0.0, False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def limited() -> Message:
            nonlocal received, complete, deadline
            if too_big:
                raise self._error(declared.decode())
            if complete:  # later reads only wait for a disconnect: no deadline
                return await receive()
            deadline = deadline or asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.timeout_s) from None
            except asyncio.CancelledError:
                raise BodyCancelledError() from None
            if message["type"] == "http.disconnect":
                if started or not has_body:
                    # A hang-up after a whole request (a browser leaving /docs while a file
                    # streams): the response loop sees the disconnect and stops sending.
                    return message
                raise ClientGoneError()
            complete = not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"more than {received - len(message.get('body', b''))}")
            return message

        await self.app(scope, limited, send_started)
