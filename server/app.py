"""The FastAPI app: create_app(settings) loads, checks and warms the models in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI, Response
from starlette.concurrency import run_in_threadpool

from server.api import admin, v1, v2
from server.api import repository as repository_api
from server.api.errors import install_error_handlers
from server.api.middleware import BodyLimitMiddleware, RequestMetricsMiddleware
from server.api.openapi import ServedShape, install_openapi
from server.app_state import AppState
from server.load.admission import AdmissionMiddleware
from server.load.in_flight import RequestMonitor
from server.load.operating_point import start_controller
from server.metrics import Metrics
from server.registry import ModelRegistry, load_models
from server.repository import Repository
from server.settings import Settings
from server.threshold_store import ThresholdStore, follow_overrides

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the serving application: the v1 and v2 routes, `/metrics` and `/docs`.

    The models load in the app's lifespan, not here: every model directory is read through
    `load_manifest` (sha256 checked), one ONNX Runtime session is made per stage, and every stage
    runs at the batch sizes it will see before `/v2/health/ready` answers 200.

    Args:
        settings: The server's settings; `None` reads them from the `ELF_*` environment.

    Returns:
        The ASGI app, to run under uvicorn or Granian (`elf-serve` does both).
    """
    settings = settings if settings is not None else Settings()
    state = AppState(settings=settings, metrics=Metrics())
    # The load controller's end-to-end view of the inference requests (ELF_LATENCY_TARGET_MS).
    requests = RequestMonitor() if settings.latency_target_ms is not None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Readiness only after every stage of every model ran at every batch size.
        repository = await run_in_threadpool(_open_repository, state, requests)
        if settings.state_dir is not None:
            state.store = repository.store = ThresholdStore(settings.state_dir)
            follow_overrides(state.store, state.models, state.metrics)
        for model in state.models.all_models():
            start_controller(model, settings, state.metrics, requests)
        grpc_server = await _start_grpc(state, requests)
        repository.start_polling()
        state.ready = True
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; answer whatever is still queued.
            state.ready = False
            repository.stop()
            if grpc_server is not None:  # no new calls; those in flight finish first
                await grpc_server.stop(settings.request_timeout_s)
            if state.store is not None:
                state.store.stop()
            await run_in_threadpool(state.models.stop, settings.request_timeout_s)
            state.metrics.process_exited()
            log.info("batchers stopped")

    app = FastAPI(
        title="ELF serving", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.elf = state
    install_openapi(app, str(swagger_ui_bundle.swagger_ui_path), lambda: served_shape(state))
    install_error_handlers(app, state.metrics, settings.retry_after_s)
    app.include_router(v1.router)
    app.include_router(admin.router)
    app.include_router(v2.router)
    app.include_router(repository_api.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    if requests is not None:
        app.add_middleware(
            AdmissionMiddleware,
            requests=requests,
            metrics=state.metrics,
            retry_after_s=settings.retry_after_s,
        )
    # Added last, so outermost: it times and counts every response.
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    return app


def _open_repository(state: AppState, requests: RequestMonitor | None) -> Repository:
    """Load every model of ELF_MODEL_DIR (a failure stops the start), then open the repository
    that loads and unloads models while serving (server/repository.py)."""
    settings = state.settings
    registry = ModelRegistry(settings.default_model)
    repository = Repository(settings, state.metrics, registry, requests)
    repository.seen_now()  # before the load: the poll then acts on changes from here on
    load_models(settings, state.metrics, registry)
    state.registry, state.repository = registry, repository
    return repository


async def _start_grpc(state: AppState, requests: RequestMonitor | None) -> Any:
    """The gRPC server (server/grpc/) on ELF_GRPC_PORT, or None when it is 0 (grpc is then
    never imported)."""
    if state.settings.grpc_port == 0:
        return None
    from server.grpc.server import start_grpc  # noqa: PLC0415

    return await start_grpc(state, requests)


def served_shape(state: AppState) -> ServedShape | None:
    """The bounds the OpenAPI schema states for the loaded models; None before loading."""
    if state.registry is None:
        return None
    models = state.registry.models.values()
    return ServedShape(
        model_names=tuple(sorted(state.registry.models)),
        versions=tuple(sorted({m.manifest.version for m in models})),
        max_classes=max(len(m.manifest.class_names) for m in models),
        exit_counts=tuple(sorted({m.num_exits for m in models})),
        input_names=tuple(sorted({m.manifest.stages[0].input.name for m in models})),
        output_names=tuple(v2.OUTPUTS),
        max_images=state.settings.max_images_per_request,
    )


def app_from_env() -> FastAPI:
    """uvicorn factory (`server.app:app_from_env`): settings from ELF_* variables."""
    settings = Settings()
    if not logging.getLogger().handlers:  # a uvicorn worker process: nobody configured logging
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    return create_app(settings)
