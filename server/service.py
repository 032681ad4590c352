"""What v1 and v2 share: decode off the loop when it is worth it, classify, count the answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from server.app_state import AppState
from server.preprocess import InputError, decode_all
from server.registry import ExitMode, ServedModel
from server.settings import Settings


@dataclass(frozen=True)
class Answer:
    class_index: int
    confidence: float
    probs: np.ndarray  # [C] float64 at the exit taken
    exit_index: int
    threshold: float  # what that exit needed
    flops_executed: int
    queue_ms: float
    compute_ms: float


def check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise InputError("no image in the request")
    if n > settings.max_images_per_request:
        raise InputError(
            f"{n} images in one request; the limit is {settings.max_images_per_request} "
            "(ELF_MAX_IMAGES_PER_REQUEST)",
            reason="too_many_images",
        )


async def decode(
    images: Sequence[tuple[str, bytes]], model: ServedModel, settings: Settings
) -> list[np.ndarray]:
    """Small payloads decode inline (a thread hop costs more than a 28 px PNG); big ones not."""
    check_count(len(images), settings)
    pre, limit = model.manifest.preprocessing, settings.max_image_pixels
    if sum(len(data) for _, data in images) <= settings.decode_inline_bytes:
        return decode_all(images, pre, limit)
    return await run_in_threadpool(decode_all, images, pre, limit)


async def classify(
    state: AppState,
    model: ServedModel,
    arrays: Sequence[np.ndarray],
    threshold: float | None,
    mode: ExitMode,
) -> list[Answer]:
    """Classify preprocessed images through the model's batcher and count them in the metrics.

    Args:
        state: The app's state (settings and metrics).
        model: The served model whose batcher runs the images.
        arrays: One normalised float32 array per image, shaped as the model's input.
        threshold: One threshold for every auxiliary exit; `None` uses the model's current ones.
        mode: `auto` (early exit) or `final` (full.onnx in one call where the model directory
            has it, else every stage runs).

    Returns:
        One answer per image, in order: class, confidence, probabilities, the exit taken with its
        threshold, the FLOPs executed, and the queue and compute times.

    Raises:
        TimeoutError: No answer within `ELF_REQUEST_TIMEOUT_S`.
    """
    settings = state.settings
    check_count(len(arrays), settings)
    thr = model.row_thresholds(threshold, mode)
    timeout_s = settings.request_timeout_s
    exits = model.manifest.exits
    flops = [e.cumulative_flops for e in exits]
    if mode == "final" and model.full is not None:  # full.onnx, one call: the backbone's FLOPs
        results = await model.full.infer(arrays, timeout_s)
        flops[-1] = model.full.flops
    else:
        results = await model.batcher.infer(arrays, [thr] * len(arrays), timeout_s)
    answers = [
        Answer(
            class_index=int(np.argmax(r.probs)),
            confidence=float(np.max(r.probs)),
            probs=r.probs,
            exit_index=r.exit_index,
            threshold=float(thr[r.exit_index]),
            flops_executed=flops[r.exit_index],
            queue_ms=r.queue_s * 1e3,
            compute_ms=r.compute_s * 1e3,
        )
        for r in results
    ]
    state.metrics.record_answers(
        model.name,
        model.version,
        [a.exit_index for a in answers],
        sum(a.flops_executed for a in answers),
        model.manifest.flops_full * len(answers),
    )
    return answers
