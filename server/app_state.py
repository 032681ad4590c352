"""What an app holds (app.state.elf) and how handlers reach it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from server.metrics import Metrics
from server.registry import ModelRegistry
from server.repository import Repository
from server.settings import Settings
from server.threshold_store import ThresholdStore


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry | None = None
    ready: bool = False  # models loaded and warmed, not shutting down
    store: ThresholdStore | None = None  # ELF_STATE_DIR's overrides, when set
    repository: Repository | None = None  # loads and unloads while serving

    @property
    def repo(self) -> Repository:
        if self.repository is None:
            raise RuntimeError("the repository is not open (the app's lifespan has not run)")
        return self.repository

    @property
    def models(self) -> ModelRegistry:
        if self.registry is None:
            raise RuntimeError("models are not loaded (the app's lifespan has not run)")
        return self.registry


# async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.elf
    return state
