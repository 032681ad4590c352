"""Server configuration: one frozen settings object, read from `ELF_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PositiveInt = Annotated[int, Field(gt=0)]


HttpServer = Literal["uvicorn", "granian"]


def _off_is_zero(value: object) -> object:
    return 0 if isinstance(value, str) and value.strip().lower() == "off" else value


# A TCP port to listen on; 0 (or "off") = do not listen.
OptionalPort = Annotated[int, BeforeValidator(_off_is_zero), Field(ge=0, le=65535)]


class Settings(BaseSettings):
    """Everything the service needs; `Settings()` reads `ELF_<FIELD>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="ELF_", frozen=True, extra="forbid")

    # One model directory (holding manifest.json), or a repository root: model directories
    # under it, and versions in <root>/<name>/<version>/ (docs/serving/repository.md).
    model_dir: Path = Path("models/fashion-mnist-lt")
    # Versions of each model served at once: the newest N in the repository; a newer one that
    # loads replaces the oldest, which drains and is unloaded.
    model_versions: PositiveInt = 1
    # Seconds between two reads of the repository that load new or changed model directories
    # (and unload removed ones); unset = off: loads only at start and through the API.
    repository_poll_s: Annotated[float, Field(gt=0.0)] | None = None
    # Name (manifest `name`) of the model behind /v1/classify; default: the first in name order.
    default_model: str | None = None
    # auto: CUDA when onnxruntime offers it, else CPU; cuda: fail unless CUDA is active.
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    # The GPU the CUDA provider runs on.
    cuda_device_id: Annotated[int, Field(ge=0)] = 0
    # CUDA provider options (ONNX Runtime's names; ignored on CPU). HEURISTIC asks cuDNN for its
    # ranked guess per new input shape; EXHAUSTIVE (ORT's default) benchmarks every algorithm
    # once per shape (a slow first call per shape), DEFAULT uses one fixed algorithm.
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = "HEURISTIC"
    # kSameAsRequested grows the arena by what is asked; kNextPowerOfTwo (ORT's default) doubles.
    cuda_arena_extend_strategy: Literal["kSameAsRequested", "kNextPowerOfTwo"] = "kSameAsRequested"
    # Bytes the CUDA arena of each session may hold; 0 = no limit.
    cuda_mem_limit_bytes: Annotated[int, Field(ge=0)] = 0
    # TF32 Conv/MatMul on Ampere and later: faster, ~1e-3 relative error; off = CPU parity.
    cuda_tf32: bool = False
    # False: ask for CUDA alone and set session.disable_cpu_ep_fallback, so a graph node that
    # CUDA cannot run fails session creation instead of running on the CPU (tests use it).
    cuda_cpu_fallback: bool = True
    # Load CUDA and cuDNN from the nvidia-* pip packages that `.[gpu]` installs
    # (onnxruntime.preload_dlls, then the system's library path) before the first CUDA session.
    cuda_preload_dlls: bool = True

    # Rows per stage batch (with batch_cap=auto: the largest the cap may be).
    max_batch_size: PositiveInt = 32
    # The batcher's cap on rows per batch (server/batching/batch_cap.py): max = max_batch_size;
    # auto = at startup, the smallest batch size whose time per image through the batcher (a
    # burst to the last exit) is within batch_cap_tolerance of the best (up to max_batch_size).
    # Small batches flatten the closed-loop latency tail where they cost no throughput.
    batch_cap: Literal["max", "auto"] = "max"
    # batch_cap=auto: the accepted excess over the best time per image (0 <= t < 1).
    batch_cap_tolerance: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    # How long the oldest waiting row may wait for a fuller batch, at every stage.
    max_queue_delay_ms: Annotated[float, Field(ge=0.0)] = 2.0
    # Which ready stage queue runs next (server/batching/scheduling.py): age-aware (oldest request
    # first: full rounds, flatter tail, more images/s in every closed-loop run of
    # bench/results/engine_notes.md) or deepest-first (work already paid for leaves first).
    scheduling: Literal["deepest-first", "age-aware"] = "age-aware"
    # Images admitted and not yet answered, per model; beyond it requests get 503.
    max_queue_size: PositiveInt = 1024
    # Longest time a request may wait for its answer (504 after).
    request_timeout_s: Annotated[float, Field(gt=0.0)] = 30.0
    # Seconds in the Retry-After header of a 503 (queue full, overloaded, shutting down).
    retry_after_s: PositiveInt = 1

    # Slow and idle clients (docs/serving/limits.md). A request's line and headers must arrive
    # within head_timeout_s of the connection's start or of the head's first byte (408, or a
    # close when nothing came); Granian takes whole milliseconds, at most 60 s.
    head_timeout_s: Annotated[float, Field(gt=0.0, le=60.0)] = 10.0
    # An idle keep-alive connection closes this long after its last response.
    keep_alive_timeout_s: Annotated[float, Field(gt=0.0)] = 5.0
    # Connections (uvicorn: connections or running requests; Granian: requests in flight) per
    # worker; beyond it uvicorn answers 503 and Granian stops accepting until one ends.
    max_connections: PositiveInt = 1024

    # Largest request body in bytes (413 beyond).
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    # Longest time a request body may take to arrive, from its first byte read (408 after).
    body_timeout_s: Annotated[float, Field(gt=0.0)] = 30.0
    # Width x height of an image, read from its header before decoding (413 beyond).
    max_image_pixels: PositiveInt = 16_000_000
    # Images in one request (400 beyond).
    max_images_per_request: PositiveInt = 64
    # Total encoded bytes of a request above which decoding leaves the event loop.
    decode_inline_bytes: Annotated[int, Field(ge=0)] = 64 * 1024

    # Bearer token for PUT /v1/models/{name}/thresholds and the repository's load, unload and
    # index calls (HTTP and gRPC); unset = those are disabled.
    admin_token: SecretStr | None = None

    # ONNX Runtime threads per stage session; 0 = the CPUs this process may use / workers.
    intra_op_threads: Annotated[int, Field(ge=0)] = 0
    # Spinning threads cut latency but burn the cores the HTTP side needs on small machines.
    ort_spinning: bool = False
    # Warm every batch size 1..max_batch_size (False: only 1 and max_batch_size; tests).
    warmup_all_batch_sizes: bool = True

    # Directory for state shared by the workers and kept across restarts (threshold overrides);
    # unset = one worker keeps a PUT in memory; several get a private directory of the run
    # from elf-serve (shared by them, removed at exit).
    state_dir: Path | None = None
    # Fraction of early-exited images finished at full depth, when the batcher is idle, to
    # measure agreement with the final exit (server/batching/audit.py); 0 = off.
    audit_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Latency target of the load-adaptive operating point (server/load/controller.py):
    # request latency from arrival at the app to answer (0.9 quantile per tick), the oldest
    # unanswered request's age and the batcher's queue delay must stay under it; cheaper points
    # first, then (at ELF_MIN_ACCURACY) 503s beyond an admission limit. Unset = off.
    latency_target_ms: Annotated[float, Field(gt=0.0)] | None = None
    # The controller's floor: validation balanced accuracy (0..1) of the cheapest point it may
    # use; unset = the calibrated point's minus 0.01.
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    # The Open Inference Protocol over gRPC (server/grpc/): its port, next to HTTP's; 0 = off.
    grpc_port: OptionalPort = 8001
    # Where gRPC listens; elf-serve sets it to its --host unless ELF_GRPC_HOST is set.
    grpc_host: str = "127.0.0.1"

    # Worker processes, each with its own models and batcher (ELF_STATE_DIR shares thresholds).
    workers: PositiveInt = 1
    # The HTTP server in front of the app (server/frontend.py); granian needs the granian extra.
    http_server: HttpServer = "uvicorn"
    # Log level of the server; debug also prints the traceback of a start-up error.
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue_size < self.max_images_per_request:
            raise ValueError(
                f"ELF_MAX_QUEUE_SIZE={self.max_queue_size} is below ELF_MAX_IMAGES_PER_REQUEST="
                f"{self.max_images_per_request}: a full request could never be admitted; raise "
                "the queue size or lower the images per request"
            )
        return self

    def threads_per_session(self) -> int:
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, available_cpus() // self.workers)


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """ELF_* variables that set nothing (a typo would otherwise pass silently)."""
    env = os.environ if environ is None else environ
    fields = {name.upper() for name in Settings.model_fields}
    return sorted(k for k in env if k.upper().startswith("ELF_") and k.upper()[4:] not in fields)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
