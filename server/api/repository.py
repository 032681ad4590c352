"""Triton's model repository extension over HTTP (bearer ELF_ADMIN_TOKEN, as the admin calls):

- `POST /v2/repository/index` (body `{}`, `{"ready": true}` or none): every version in the
  repository and every one served, with its state (READY, LOADING, UNAVAILABLE) and reason;
- `POST /v2/repository/models/{name}/load`: serve the newest versions of `name` in the
  repository (load new or changed ones; a failure is a 400 and changes nothing);
- `POST /v2/repository/models/{name}/unload`: stop serving `name` once its requests are answered.
The work is server/repository.py's; load and unload answer 200 with an empty body, as Triton.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from server.api.admin import check_admin
from server.api.openapi import error_responses
from server.api.v1 import StateDep
from server.repository import check_parameters
from server.schemas.v2 import RepositoryIndexEntry, RepositoryIndexRequest, RepositoryModelRequest

router = APIRouter(prefix="/v2/repository", tags=["model repository"])
Body = TypeVar("Body", bound=BaseModel)


async def repository_admin(request: Request, state: StateDep) -> None:
    check_admin(request.headers.get("authorization"), state, "model repository calls")


async def _body(request: Request, model: type[Body]) -> Body:
    """Triton's clients send an empty body as well as JSON (without a Content-Type)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


_ADMIN = {"dependencies": [Depends(repository_admin)]}


@router.post(
    "/index",
    response_model=list[RepositoryIndexEntry],
    responses=error_responses(400, 401, 403, 404),
    **_ADMIN,  # type: ignore[arg-type]
)
async def index(request: Request, state: StateDep) -> list[RepositoryIndexEntry]:
    body = await _body(request, RepositoryIndexRequest)
    entries = await run_in_threadpool(state.repo.index, body.ready)
    return [RepositoryIndexEntry(**vars(e)) for e in entries]


@router.post(
    "/models/{name}/load",
    response_class=Response,  # 200 with an empty body, documented without content
    responses=error_responses(400, 401, 403, 404),
    **_ADMIN,  # type: ignore[arg-type]
)
async def load(name: str, request: Request, state: StateDep) -> Response:
    body = await _body(request, RepositoryModelRequest)
    check_parameters("load", body.parameters)
    await run_in_threadpool(state.repo.load, name)
    return Response(status_code=200)


@router.post(
    "/models/{name}/unload",
    response_class=Response,  # 200 with an empty body, documented without content
    responses=error_responses(400, 401, 403, 404),
    **_ADMIN,  # type: ignore[arg-type]
)
async def unload(name: str, request: Request, state: StateDep) -> Response:
    body = await _body(request, RepositoryModelRequest)
    check_parameters("unload", body.parameters)
    await run_in_threadpool(state.repo.unload, name)
    return Response(status_code=200)
