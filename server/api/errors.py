"""Every failure becomes a JSON `{"error": "..."}` with a 4xx/5xx status, counted by reason."""

from __future__ import annotations

import logging

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

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return reject(exc.reason, exc.status, exc.message, exc.headers)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return reject(exc.reason, exc.status, str(exc))

    @app.exception_handler(UnknownModelError)
    async def _unknown(_: Request, exc: UnknownModelError) -> JSONResponse:
        return reject("unknown_model", 404, str(exc))

    @app.exception_handler(QueueFullError)
    async def _full(_: Request, exc: QueueFullError) -> JSONResponse:
        return reject("queue_full", 503, str(exc), {"Retry-After": str(retry_after_s)})

    @app.exception_handler(NeverFitsError)
    async def _never(_: Request, exc: NeverFitsError) -> JSONResponse:
        return reject("never_fits", 413, str(exc))

    @app.exception_handler(ShuttingDownError)
    async def _closing(_: Request, exc: ShuttingDownError) -> JSONResponse:
        return reject("shutting_down", 503, str(exc), {"Retry-After": str(retry_after_s)})

    @app.exception_handler(TimeoutError)
    async def _timeout(_: Request, exc: TimeoutError) -> JSONResponse:
        return reject("timeout", 504, "the request timed out waiting for the model")

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
