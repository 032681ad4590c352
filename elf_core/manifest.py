"""The model directory contract: manifest schema, loader and file verification.

Importable without torch or onnx (part of elf_core): export writes it, the server reads it. A
model directory holds `manifest.json`, one ONNX graph per stage, `full.onnx` and
the calibration outputs; every file the manifest names carries its sha256, checked on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION: Literal[1] = 1
MANIFEST_FILE = "manifest.json"
FLOPS_CONVENTION = "FLOPs = 2 x multiply-adds of every Conv and Linear layer run"
# A model's name: in URLs (/v2/models/{name}) and metric labels.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegInt = Annotated[int, Field(ge=0)]


class ManifestError(ValueError):
    """A model directory that cannot be served; the message names the file and the problem."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Preprocessing(_Frozen):
    """How an image becomes the NCHW float32 input of stage 0."""

    channels: Literal[1, 3]
    height: Annotated[int, Field(gt=0)]
    width: Annotated[int, Field(gt=0)]
    # Applied after scaling pixels to [0, 1]: x = (x - mean[c]) / std[c].
    mean: list[float]
    std: list[float]
    # "resize": stretch to (height, width); "resize_center_crop": shorter side to the target, then
    # a centre crop; "exact": refuse any other size.
    resize: Literal["resize", "resize_center_crop", "exact"] = "resize"
    interpolation: Literal["bilinear", "nearest", "bicubic"] = "bilinear"

    @model_validator(mode="after")
    def _per_channel(self) -> Preprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class TensorSpec(_Frozen):
    name: str
    # Symbolic dimensions are strings ("batch"); dim 0 is always symbolic.
    shape: list[int | str]
    dtype: Literal["float32", "float16"] = "float32"


class FileRef(_Frozen):
    file: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class StageSpec(FileRef):
    """Stage k: input -> (features_k, logits_k); the last stage: input -> logits."""

    index: NonNegInt
    input: TensorSpec
    features: TensorSpec | None
    logits: TensorSpec
    flops_body: NonNegInt
    # The exit head after this stage; for the last stage, the final classifier.
    flops_exit: NonNegInt


class ExitSpec(_Frozen):
    index: NonNegInt
    stage: NonNegInt
    # An image leaves at the first exit whose softmax maximum reaches its threshold; the last
    # exit always answers, so its threshold is recorded as 0.
    threshold: Probability
    # FLOPs executed by an image that leaves here: stage bodies and exit heads 0..index.
    cumulative_flops: NonNegInt


class CalibrationPoint(_Frozen):
    thresholds: list[Probability]
    balanced_accuracy: Probability
    tail_accuracy: Probability | None = None
    # Plain top-1 (not class-balanced), for reference.
    accuracy: Probability | None = None
    flops_ratio: Annotated[float, Field(ge=0.0)]
    exit_rates: list[Probability] = []
    # Tail protection: mean recall over the protected classes.
    protected_accuracy: Probability | None = None


class Calibration(_Frozen):
    split: str = "validation"
    metric: str = "balanced_accuracy"
    tolerance: Annotated[float, Field(ge=0.0, le=1.0)]
    best: CalibrationPoint
    chosen: CalibrationPoint
    final_exit_only: CalibrationPoint | None = None
    # Measured once on the test set after the thresholds were fixed on `split`.
    test: CalibrationPoint | None = None
    test_final_exit_only: CalibrationPoint | None = None
    curve_file: str | None = "calibration.json"
    # Tail protection (elf-export calibrate --tail-tolerance): `chosen` also keeps the protected
    # classes within tail_tolerance of their best validation accuracy (protected_reference) among
    # the points within `tolerance`; plain_chosen is what balanced accuracy alone would choose.
    tail_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    protected_classes: list[NonNegInt] | None = None
    protected_reference: Probability | None = None
    plain_chosen: CalibrationPoint | None = None
    test_plain_chosen: CalibrationPoint | None = None


class Quantization(_Frozen):
    """How `elf-export quantize` made this directory from a float32 one (absent: float32)."""

    precision: str  # "int8-u8" | "int8": the stage graphs' arithmetic; interfaces stay float32
    method: str
    calibration_split: str = "train"  # activation ranges; thresholds are chosen on validation
    calibration_images: Annotated[int, Field(gt=0)]
    source: str  # the float32 directory's "name v version"
    source_stage_sha256: list[str]
    # Validation images where this directory and the float32 source give the same class: at the
    # final exit alone, and as served (each at its own thresholds).
    final_agreement: Probability
    served_agreement: Probability
    command: str | None = None
    created: str | None = None


class Provenance(_Frozen):
    dataset: str
    method: str
    loss: str
    epochs: NonNegInt
    architecture: str
    # The long tail's class order, head first, when training reordered it (None: the data set's).
    class_order: list[int] | None = None
    commit: str | None = None
    command: str | None = None
    created: str | None = None
    quantization: Quantization | None = None


class Manifest(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: Annotated[str, Field(pattern=f"^{MODEL_NAME_PATTERN}$")]
    version: str
    class_names: Annotated[list[str], Field(min_length=2)]
    preprocessing: Preprocessing
    stages: Annotated[list[StageSpec], Field(min_length=1)]
    exits: Annotated[list[ExitSpec], Field(min_length=1)]
    full_model: FileRef | None = None
    # The backbone alone: every stage body and the final classifier, no auxiliary exit heads.
    flops_full: Annotated[int, Field(gt=0)]
    flops_convention: str = FLOPS_CONVENTION
    calibration: Calibration | None = None
    provenance: Provenance

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.stages)
        if [s.index for s in self.stages] != list(range(n)):
            raise ValueError("stages must be listed in order with indices 0..K-1")
        if [e.index for e in self.exits] != list(range(n)) or [e.stage for e in self.exits] != list(
            range(n)
        ):
            raise ValueError("there must be exactly one exit per stage, in order")
        for s in self.stages[:-1]:
            if s.features is None:
                raise ValueError(f"stage {s.index} is not the last and must output features")
        flops = [e.cumulative_flops for e in self.exits]
        if flops != sorted(flops):
            raise ValueError("cumulative_flops must not decrease along the exits")
        backbone = sum(s.flops_body for s in self.stages) + self.stages[-1].flops_exit
        if backbone != self.flops_full:
            raise ValueError(
                f"flops_full {self.flops_full} != stage bodies + classifier {backbone}"
            )
        return self

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def thresholds(self) -> list[float]:
        return [e.threshold for e in self.exits]

    def files(self) -> list[FileRef]:
        refs: list[FileRef] = list(self.stages)
        if self.full_model is not None:
            refs.append(self.full_model)
        return refs


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(manifest: Manifest, model_dir: Path) -> None:
    """Raise ManifestError naming the first file that is missing or does not match its sha256."""
    for ref in manifest.files():
        path = model_dir / ref.file
        if Path(ref.file).is_absolute() or ".." in Path(ref.file).parts:
            raise ManifestError(f"{MANIFEST_FILE}: file {ref.file!r} must be inside the model dir")
        if not path.is_file():
            raise ManifestError(f"{path}: missing (named in {MANIFEST_FILE})")
        actual = sha256_file(path)
        if actual != ref.sha256:
            raise ManifestError(
                f"{path}: sha256 mismatch (manifest says {ref.sha256}, file is {actual}); "
                "the file is corrupted or was replaced after export"
            )


def _validation_errors(exc: ValidationError) -> str:
    """pydantic's errors on one line: `exits.0.threshold: Input should be ... (got 1.5)`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        got = f" (got {err['input']!r})" if where and not isinstance(err["input"], dict) else ""
        parts.append(f"{where or 'manifest'}: {err['msg']}{got}")
    return "; ".join(parts)


def load_manifest(model_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Load and validate `model_dir/manifest.json`, and by default check every file's sha256."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_FILE
    if not model_dir.is_dir():
        raise ManifestError(f"{model_dir}: model directory does not exist")
    if not path.is_file():
        raise ManifestError(f"{path}: missing; a model directory needs a {MANIFEST_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ManifestError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported "
            f"(this code reads version {SCHEMA_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid manifest: {_validation_errors(exc)}") from exc
    if verify:
        verify_files(manifest, model_dir)
    return manifest


def write_manifest(manifest: Manifest, model_dir: str | Path) -> Path:
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


# agreement.json (optional): the reference of the server's online audit; computed by
# elf_core/agreement.py.
AGREEMENT_FILE = "agreement.json"


class ExitAgreement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    exit: int = Field(ge=0)
    exited: int = Field(ge=0)  # validation images that left at this exit
    agree: int = Field(ge=0)  # of those, same class as the final exit
    agreement: float | None = Field(ge=0.0, le=1.0)  # agree / exited; None when none left here


class Agreement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    split: str
    images: int = Field(gt=0)
    thresholds: list[float]  # the operating point it was measured at ([K], last 0)
    exits: list[ExitAgreement]  # the auxiliary exits 0..K-2


def write_agreement(agreement: Agreement, model_dir: Path) -> Path:
    path = model_dir / AGREEMENT_FILE
    path.write_text(agreement.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load_agreement(model_dir: Path) -> Agreement | None:
    """agreement.json of a model directory; None when it has none; ValueError names a bad one."""
    path = model_dir / AGREEMENT_FILE
    if not path.is_file():
        return None
    try:
        return Agreement.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid agreement file ({exc})") from exc
