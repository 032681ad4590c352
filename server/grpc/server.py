"""The gRPC server: started by the app's lifespan once the models are warm, on the same event
loop as HTTP (grpc.aio); stopped by it at shutdown before the batchers are (`server.stop(grace)`:
no new calls, those in flight finish).

With several workers (`--workers N`), every worker listens on the port with SO_REUSEPORT and
the kernel spreads the connections over them; with one, SO_REUSEPORT stays off, so a port
already in use fails the start instead of being shared with another process.
"""

from __future__ import annotations

import logging

import grpc

from server.app_state import AppState
from server.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from server.grpc.service import InferenceServicer
from server.load.in_flight import RequestMonitor

log = logging.getLogger(__name__)


class GrpcStartError(RuntimeError):
    """The gRPC port cannot be listened on (the user's fix, in one line)."""


async def start_grpc(state: AppState, requests: RequestMonitor | None) -> grpc.aio.Server | None:
    """Listen on ELF_GRPC_HOST:ELF_GRPC_PORT; None when ELF_GRPC_PORT is 0 (off)."""
    s = state.settings
    if s.grpc_port == 0:
        return None
    server = grpc.aio.server(
        options=[
            # ELF_MAX_BODY_BYTES bounds a gRPC message as it bounds an HTTP body.
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.so_reuseport", int(s.workers > 1)),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state, requests), server)
    address = f"{s.grpc_host}:{s.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise GrpcStartError(
            f"cannot listen for gRPC on {address} ({exc}); choose another port with "
            "--grpc-port (ELF_GRPC_PORT), or 0 to turn gRPC off"
        ) from None
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
