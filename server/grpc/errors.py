"""A failure -> the gRPC status code and message an HTTP client would get with its 4xx/5xx.

The messages are HTTP's (server/api/errors.py), word for word, and counted in elf_rejected_total
by the same reasons; the status code is the gRPC code of the HTTP status. A 503's Retry-After
travels as trailing metadata `retry-after`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from pydantic import ValidationError

from server.api.errors import ApiError
from server.batching.rows import NeverFitsError, QueueFullError, ShuttingDownError
from server.preprocess import InputError
from server.registry import UnknownModelError

log = logging.getLogger(__name__)

# HTTP status -> gRPC status code (gRPC's own refusal of an oversized message, our 413, is
# RESOURCE_EXHAUSTED too).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
TIMEOUT_MESSAGE = "the request timed out waiting for the model"


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status the same failure gets over HTTP
    reason: str  # elf_rejected_total's label; "" = not counted (internal errors)
    message: str

    @property
    def code(self) -> grpc.StatusCode:
        return STATUS_CODES.get(self.status, grpc.StatusCode.UNKNOWN)


def _validation_message(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts) or "invalid request"


def refusal(exc: Exception) -> Refusal:
    """What the client is told; an exception no rule covers is an internal error (logged with
    its traceback; the client gets no exception text)."""
    match exc:
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
        case ValidationError():
            return Refusal(400, "bad_request", _validation_message(exc))
        case ApiError():
            return Refusal(exc.status, exc.reason, exc.message)
    log.error("internal error: %r", exc, exc_info=exc)
    return Refusal(500, "", "internal error")
