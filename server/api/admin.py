"""PUT /v1/models/{name}/thresholds: change the operating point (bearer ELF_ADMIN_TOKEN).

With ELF_STATE_DIR set, the change is written to the state directory (server/threshold_store.py):
every worker applies it within a second and a restart keeps it. Without it, `elf-serve
--workers N` (N > 1) makes a private state directory for the run (server/cli.py), so every
worker still follows the change; one worker keeps it in memory. Either way a restart without
ELF_STATE_DIR starts from the manifest's thresholds.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from server.api.errors import ApiError
from server.api.openapi import THRESHOLDS_BODY, error_responses
from server.api.v1 import StateDep
from server.app_state import AppState
from server.load.operating_point import rebase
from server.schemas.v1 import ThresholdsChanged, ThresholdsUpdate

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


async def read_update(request: Request) -> ThresholdsUpdate:
    """The body, read and validated only after the token was checked (a caller without the
    token learns nothing about bodies; FastAPI would parse a declared body first)."""
    try:
        return ThresholdsUpdate.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


@router.put(
    "/models/{name}/thresholds",
    response_model=ThresholdsChanged,
    responses=error_responses(400, 401, 403, 404, 408, 413, 422, 499, 500),
    openapi_extra=THRESHOLDS_BODY,
)
async def set_thresholds(name: str, request: Request, state: StateDep) -> ThresholdsChanged:
    """Body: {"thresholds": [t_0, ..., t_{K-2}]} (or K values, the last 0)."""
    require_admin(request, state)
    body = await read_update(request)
    model = state.models.get(name)
    previous = model.set_thresholds(body.thresholds)  # validates: 4xx before anything is written
    if state.store is not None:
        try:
            state.store.write(model.name, model.manifest.version, list(model.thresholds))
        except OSError as exc:
            model.set_thresholds(list(previous))
            log.error("%s: cannot write %s: %s", model.name, state.store.path, exc)
            # The reason goes to the log only: an OSError names paths of the server.
            raise ApiError(
                500,
                "thresholds not changed: the state directory is not writable (see the log)",
                "state_dir",
            ) from exc
    state.metrics.set_thresholds(model.name, model.thresholds)
    rebase(model, state.metrics)  # the load controller starts again from the new base
    log.info("%s: thresholds %s -> %s", model.name, list(previous), list(model.thresholds))
    return ThresholdsChanged(
        model=model.name, thresholds=list(model.thresholds), previous=list(previous)
    )
