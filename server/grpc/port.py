"""Before the server starts: is the gRPC port free? (socket only: grpc is not imported)."""

from __future__ import annotations

import socket

from server.settings import Settings


class GrpcPortError(Exception):
    """The gRPC port cannot be listened on (the user's fix, in one line)."""


def check_grpc_port(settings: Settings) -> None:
    """Bind and release ELF_GRPC_HOST:ELF_GRPC_PORT once, so that a port in use fails here in one
    line instead of in the app's start-up (after the models loaded)."""
    if settings.grpc_port == 0:
        return
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        infos = socket.getaddrinfo(settings.grpc_host, settings.grpc_port, type=socket.SOCK_STREAM)
        family, kind, proto, _, where = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
    except OSError as exc:
        raise GrpcPortError(
            f"cannot listen for gRPC on {address} ({exc.strerror or exc}); choose another port "
            "with --grpc-port (ELF_GRPC_PORT), or 0 to turn gRPC off"
        ) from None
