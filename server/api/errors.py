"""Every failure becomes a JSON `{"error": "..."}` with a 4xx/5xx status, counted by reason.

`refusal` is the one table from a failure to (HTTP status, reason, message); the gRPC service
(server/grpc/errors.py) answers the same failures with the same messages through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.batching.rows import NeverFitsError, QueueFullError, ShuttingDownError
from server.metrics import Metrics
from server.preprocess import InputError
from server.registry import UnknownModelError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status
    reason: str  # elf_rejected_total's label
    message: str


TIMEOUT_MESSAGE = "the request timed out waiting for the model"
# The failures a client causes or must retry, whatever the protocol.
REFUSED = (
    ApiError, InputError, UnknownModelError, QueueFullError, NeverFitsError, ShuttingDownError,
    TimeoutError,
)  # fmt: skip


def refusal(exc: Exception) -> Refusal | None:
    """What the client is told about `exc`; None for an internal error (no rule covers it)."""
    match exc:
        case ApiError():
            return Refusal(exc.status, exc.reason, exc.message)
        case InputError():
            return Refusal(exc.status, exc.reason, str(exc))
        case UnknownModelError():
            return Refusal(404, "unknown_model", str(exc))
        case QueueFullError():
            return Refusal(503, "queue_full", str(exc))
        case NeverFitsError():
            return Refusal(413, "never_fits", str(exc))
        case ShuttingDownError():
            return Refusal(503, "shutting_down", str(exc))
        case TimeoutError():
            return Refusal(504, "timeout", TIMEOUT_MESSAGE)
    return None


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


_REASONS = {413: "body_too_large", 400: "bad_request", 408: "body_timeout", 499: "client_gone"}


def install_error_handlers(app: FastAPI, metrics: Metrics, retry_after_s: int) -> None:
    def reject(
        reason: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.rejected.labels(reason=reason).inc()
        return error_response(status, message, headers)

    for kind in REFUSED:

        @app.exception_handler(kind)
        async def _refused(_: Request, exc: Exception) -> JSONResponse:
            r = refusal(exc)
            assert r is not None  # every REFUSED type has its rule
            headers = exc.headers if isinstance(exc, ApiError) else None
            if r.status == 503 and headers is None:
                headers = {"Retry-After": str(retry_after_s)}
            return reject(r.reason, r.status, r.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # KServe v2 answers bad requests with 400; v1 keeps FastAPI's 422.
        status = 400 if request.url.path.startswith("/v2") else 422
        return reject("bad_request", status, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 413/408 from the body limits, 400 from Starlette's multipart parser; 404/405 not counted.
        reason = _REASONS.get(exc.status_code)
        if exc.status_code in (408, 499, 503):  # the client's doing or shutdown: one line
            log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
        if reason is not None:
            metrics.rejected.labels(reason=reason).inc()
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        # The exception's text goes to the log only: it may name paths, settings or data.
        log.error("internal error: %r", exc, exc_info=exc)
        return error_response(500, "internal error (logged by the server)")
