"""The load controller's view of inference requests, and its admission limit.

The inference routes (INFERENCE_ROUTES, every POST route of the app; a test checks that):
this middleware counts each request in and out of RequestMonitor (end-to-end latency from its
arrival at the app, requests in flight) and, while the controller sheds load at its cheapest
point (server/load/controller.py), answers the requests beyond the admission limit at once
with 503 and Retry-After, before their body is read or decoded, counted as
elf_rejected_total{reason="overloaded"}. Installed only with ELF_LATENCY_TARGET_MS set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import error_response
from server.load.in_flight import RequestMonitor
from server.metrics import Metrics

INFERENCE_ROUTES = (
    "/v1/classify",
    "/v1/models/{name}/classify",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{model_version}/infer",
)


@dataclass(frozen=True)
class RouteLabel:
    """Stands in for scope["route"] of a refused request (never routed): its template."""

    path: str


def overloaded_message(limit: int | None) -> str:
    """The refusal beyond the admission limit (HTTP 503 here, gRPC UNAVAILABLE in server/grpc)."""
    return (
        f"overloaded: {limit} requests in flight, the most admitted while "
        "the service sheds load at its cheapest operating point (ELF_LATENCY_TARGET_MS)"
    )


def _compiled() -> list[tuple[re.Pattern[str], RouteLabel]]:
    return [(compile_path(t)[0], RouteLabel(t)) for t in INFERENCE_ROUTES]


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        requests: RequestMonitor,
        metrics: Metrics,
        retry_after_s: int,
    ) -> None:
        self.app = app
        self.requests = requests
        self.metrics = metrics
        self.retry_after = str(retry_after_s)
        self.routes = _compiled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        token = self.requests.admit()
        if token is None:
            scope["route"] = route  # the route label of elf_requests_total, as if routed
            await self._refuse(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests.done(token)

    def _route(self, scope: Scope) -> RouteLabel | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        return next((label for regex, label in self.routes if regex.match(path)), None)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.child(self.metrics.rejected, "overloaded").inc()
        message = overloaded_message(self.requests.limit)
        response = error_response(503, message, {"Retry-After": self.retry_after})
        await response(scope, receive, send)
