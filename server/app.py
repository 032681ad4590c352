"""The FastAPI app: create_app(settings) loads, checks and warms the models in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from starlette.concurrency import run_in_threadpool

from server.api import admin, v1, v2
from server.api.errors import install_error_handlers
from server.api.middleware import BodyLimitMiddleware, RequestMetricsMiddleware
from server.metrics import Metrics
from server.registry import load_models
from server.settings import Settings
from server.state import AppState

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    state = AppState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Readiness only after every stage of every model ran at every batch size.
        state.registry = await run_in_threadpool(load_models, settings, state.metrics)
        state.ready = True
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; answer whatever is still queued.
            state.ready = False
            await run_in_threadpool(state.models.stop, settings.request_timeout_s)
            log.info("batchers stopped")

    app = FastAPI(title="ELF serving", version="0.1.0", lifespan=lifespan)
    app.state.elf = state
    install_error_handlers(app, state.metrics, settings.retry_after_s)
    app.include_router(v1.router)
    app.include_router(admin.router)
    app.include_router(v2.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it times and counts every response.
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (`server.app:app_from_env`): settings from ELF_* variables."""
    settings = Settings()
    if not logging.getLogger().handlers:  # a uvicorn worker process: nobody configured logging
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    return create_app(settings)
