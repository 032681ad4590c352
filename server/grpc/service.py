"""`inference.GRPCInferenceService` on the app's state: the health, metadata and infer calls
of the Open Inference Protocol (KServe v2), answered by the same data plane as HTTP
(server/open_inference.py), and the model repository calls (server/repository.py; metadata
`authorization: Bearer <ELF_ADMIN_TOKEN>`, as HTTP's header). Calls not implemented here answer
UNIMPLEMENTED."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server import open_inference as oip
from server.api.admin import check_admin
from server.api.errors import ApiError
from server.app_state import AppState
from server.grpc import wire
from server.grpc.errors import Refusal, grpc_code, refusal
from server.grpc.proto import grpc_service_pb2 as pb
from server.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from server.load.admission import overloaded_message
from server.load.in_flight import RequestMonitor
from server.repository import check_parameters

SERVICE = "/inference.GRPCInferenceService/"
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Count and time the call (elf_requests_total{protocol="grpc"}) and turn a failure into
    the status code and message HTTP would give it (server/grpc/errors.py)."""
    route = SERVICE + handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: InferenceServicer, request: Req, ctx: grpc.aio.ServicerContext) -> Resp:
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await handler(self, request, ctx)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client went away or the server stops
            raise
        except Exception as exc:
            refused = refusal(exc)
            code = grpc_code(refused)
            await self.abort(ctx, refused)
            raise  # not reached: abort raises
        finally:
            m = self.state.metrics
            m.child(m.requests, route, code.name, "grpc").inc()
            m.child(m.request_duration, route, "grpc").observe(time.perf_counter() - start)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState, requests: RequestMonitor | None) -> None:
        self.state = state
        self.requests = requests  # the load controller's admission (ELF_LATENCY_TARGET_MS)

    async def abort(self, ctx: grpc.aio.ServicerContext, refused: Refusal) -> None:
        if refused.reason:
            self.state.metrics.child(self.state.metrics.rejected, refused.reason).inc()
        trailer: tuple[tuple[str, str], ...] = ()
        if refused.status == 503:
            trailer = (("retry-after", str(self.state.settings.retry_after_s)),)
        await ctx.abort(grpc_code(refused), refused.message, trailing_metadata=trailer)

    @rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.ready)

    @rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        oip.served_model(self.state, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.state.ready)

    @rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=oip.SERVER_NAME, version=oip.server_version(), extensions=oip.EXTENSIONS
        )

    @rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = oip.served_model(self.state, request.name, request.version or None)
        versions = self.state.models.versions(model.name)
        return wire.metadata_response(oip.model_metadata(model, versions))

    @rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        token = None
        if self.requests is not None:
            token = self.requests.admit()
            if token is None:
                raise ApiError(503, overloaded_message(self.requests.limit), "overloaded")
        try:
            start = time.perf_counter()
            version = request.model_version or None
            with self.state.models.lease(request.model_name, version) as model:
                req, tail = wire.infer_request(request)
                response, _ = await oip.infer(self.state, model, req, tail, start)
            return wire.infer_response(response)
        finally:
            if token is not None and self.requests is not None:
                self.requests.done(token)

    def _admin(self, ctx: grpc.aio.ServicerContext) -> None:
        metadata = dict(ctx.invocation_metadata() or ())
        auth = metadata.get("authorization")
        check_admin(auth if isinstance(auth, str) else None, self.state, "model repository calls")

    @rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        self._admin(ctx)
        entries = await asyncio.to_thread(self.state.repo.index, request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    @rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._admin(ctx)
        check_parameters("load", request.parameters.keys())
        await asyncio.to_thread(self.state.repo.load, request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._admin(ctx)
        check_parameters("unload", request.parameters.keys())
        await asyncio.to_thread(self.state.repo.unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()
