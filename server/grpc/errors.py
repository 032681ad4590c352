"""A failure -> the gRPC status code and message an HTTP client would get with its 4xx/5xx.

The messages are HTTP's (server/api/errors.py), word for word, and counted in elf_rejected_total
by the same reasons; the status code is the gRPC code of the HTTP status. A 503's Retry-After
travels as trailing metadata `retry-after`.
"""

from __future__ import annotations

import logging

import grpc
from pydantic import ValidationError

from server.api.errors import Refusal
from server.api.errors import refusal as http_refusal

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


def grpc_code(refused: Refusal) -> grpc.StatusCode:
    """The gRPC status code of the HTTP status the same failure gets."""
    return STATUS_CODES.get(refused.status, grpc.StatusCode.UNKNOWN)


def _validation_message(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts) or "invalid request"


def refusal(exc: Exception) -> Refusal:
    """What the client is told; an exception no rule covers is an internal error (logged with
    its traceback; the client gets no exception text)."""
    if isinstance(exc, ValidationError):
        return Refusal(400, "bad_request", _validation_message(exc))
    refused = http_refusal(exc)
    if refused is not None:
        return refused
    log.error("internal error: %r", exc, exc_info=exc)
    return Refusal(500, "", "internal error")
