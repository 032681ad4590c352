"""The v1 API's JSON: classification answers, model summaries, threshold updates."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from server.schemas.threshold import Threshold


class TopK(BaseModel):
    label: str
    class_index: int
    confidence: float


class ExitTaken(BaseModel):
    index: int  # 0-based exit that answered
    count: int  # exits in the model (index == count - 1: the final classifier)
    threshold: float  # the confidence this exit needed (the final exit: 0)


class Flops(BaseModel):
    executed: int  # stage bodies and exit heads run for this image
    full: int  # the backbone alone: every stage and the final classifier
    saved_ratio: float  # 1 - executed / full (negative when every exit was passed)


class Timings(BaseModel):
    queue_ms: float  # waiting in the batcher
    compute_ms: float  # the stage runs this image took part in
    total_ms: float  # the whole request, as the handler saw it


class Prediction(BaseModel):
    index: int  # position in the request
    name: str  # "body", "file", or "files[i]" (+ filename when given)
    label: str
    class_index: int
    confidence: float
    top_k: list[TopK]
    exit: ExitTaken
    flops: Flops
    timings: Timings


class ClassifyResponse(BaseModel):
    model: str
    version: str
    results: list[Prediction]


class ExitDetail(BaseModel):
    index: int
    threshold: float  # current default
    calibrated_threshold: float  # from the manifest
    cumulative_flops: int
    flops_ratio: float


class ModelSummary(BaseModel):
    name: str
    version: str
    default: bool
    num_classes: int
    num_exits: int
    providers: list[str]
    device: str
    warnings: list[str] = []  # e.g. a CPU fallback under ELF_PROVIDERS=auto
    thresholds: list[float]


class ModelDetail(ModelSummary):
    class_names: list[str]
    preprocessing: dict[str, Any]
    exits: list[ExitDetail]
    flops_full: int
    flops_convention: str
    calibration: dict[str, Any] | None
    calibration_curve: Any | None
    # agreement.json: per auxiliary exit, the validation share of early answers that match the
    # final exit (at `thresholds`), the reference of the online audit (ELF_AUDIT_RATE).
    expected_agreement: dict[str, Any] | None = None
    provenance: dict[str, Any]
    batching: dict[str, float]
    # ELF_BATCH_CAP: the batcher's cap (`size`), its `rule` (max | auto) and, for auto, the
    # `tolerance` and the batcher's measured `ms_per_image` by batch size (bursts at startup).
    batch_cap: dict[str, Any] | None = None


class ModelList(BaseModel):
    default: str
    models: list[ModelSummary]


class ThresholdsUpdate(BaseModel):
    """K-1 values (the auxiliary exits) or K values with the last 0."""

    model_config = ConfigDict(extra="forbid")
    # JSON numbers only, the rule of the v2 `threshold` parameter; the count is the model's
    # (the served schema narrows it per model: server/api/openapi.py).
    thresholds: Annotated[list[Threshold], Field(min_length=1)]


class ThresholdsChanged(BaseModel):
    model: str
    thresholds: list[float]
    previous: list[float]
