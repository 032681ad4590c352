"""PUT /v1/models/{name}/thresholds: change the operating point (bearer ELF_ADMIN_TOKEN).

With ELF_STATE_DIR set, the change is written to the state directory (server/shared_state.py):
every worker applies it within a second and a restart keeps it. Without, it lives in this
process's memory: lost on restart, and with several workers only the one that served the PUT
changes.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Depends, Request

from server.adaptive import rebase
from server.api.errors import ApiError
from server.api.openapi import error_responses
from server.api.v1 import StateDep
from server.schemas.v1 import ThresholdsChanged, ThresholdsUpdate
from server.state import AppState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["admin"])
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require_admin(request: Request, state: AppState) -> None:
    """404 when disabled, 401 without a well-formed bearer token, 403 with a wrong one."""
    check_admin(request.headers.get("authorization"), state, "threshold updates")


def check_admin(auth: str | None, state: AppState, what: str) -> None:
    """The Authorization header's (or gRPC metadata's) bearer token against ELF_ADMIN_TOKEN."""
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise ApiError(404, f"{what} are disabled (ELF_ADMIN_TOKEN is not set)", "admin_disabled")
    if auth is None:
        raise ApiError(401, "missing Authorization: Bearer <token>", "unauthorized", _CHALLENGE)
    scheme, _, given = auth.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "malformed Authorization header: expected 'Bearer <token>'",
            "unauthorized",
            _CHALLENGE,
        )
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise ApiError(403, "wrong admin token", "forbidden")


async def admin_guard(request: Request, state: StateDep) -> None:
    require_admin(request, state)


# A dependency runs before the body is validated: no 422 to a caller without the token.
@router.put(
    "/models/{name}/thresholds",
    response_model=ThresholdsChanged,
    dependencies=[Depends(admin_guard)],
    responses=error_responses(400, 401, 403, 404, 408, 413, 422, 499),
)
async def set_thresholds(name: str, body: ThresholdsUpdate, state: StateDep) -> ThresholdsChanged:
    """Body: {"thresholds": [t_0, ..., t_{K-2}]} (or K values, the last 0)."""
    model = state.models.get(name)
    previous = model.set_thresholds(body.thresholds)  # validates: 4xx before anything is written
    if state.store is not None:
        try:
            state.store.write(model.name, model.manifest.version, list(model.thresholds))
        except OSError as exc:
            model.set_thresholds(list(previous))
            log.error("%s: cannot write %s: %s", model.name, state.store.path, exc)
            raise ApiError(
                500,
                f"thresholds not changed: the state directory is not writable ({exc})",
                "state_dir",
            ) from exc
    state.metrics.set_thresholds(model.name, model.thresholds)
    rebase(model, state.metrics)  # the load controller starts again from the new base
    log.info("%s: thresholds %s -> %s", model.name, list(previous), list(model.thresholds))
    return ThresholdsChanged(
        model=model.name, thresholds=list(model.thresholds), previous=list(previous)
    )
