"""KServe v2 / Open Inference Protocol JSON (HTTP/REST), as published by kserve, with the
binary tensor data extension's parameters (`binary_data_size`, `binary_data`,
`binary_data_output`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.schemas.threshold import Threshold

Parameters = dict[str, str | int | float | bool]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1: variable size


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class _Extensible(BaseModel):
    """Parameters the server reads are typed; others are kept (the protocol allows any)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str | int | float | bool]


class InferParameters(_Extensible):
    threshold: Threshold | None = Field(
        None, description="one confidence threshold for every auxiliary exit"
    )
    exit: Literal["auto", "final"] = Field("auto", description="final: no early exit")
    binary_data_output: bool = Field(False, description="every output in binary form")


class InputParameters(_Extensible):
    binary_data_size: Annotated[int, Field(ge=0)] | None = Field(
        None, description="bytes of this tensor after the JSON header (binary extension)"
    )


class OutputParameters(_Extensible):
    binary_data: bool = Field(False, description="this output in binary form")


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0, le=2**31 - 1)]]
    datatype: str
    parameters: InputParameters | None = None
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: InferParameters | None = None
    # The served models take one input tensor (the image batch).
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=1)]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None  # None when the output is sent in binary form


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(BaseModel):
    """Triton's model repository extension; an empty body is `{}`."""

    repository_name: str = ""
    ready: bool = Field(False, description="only the versions ready for inference")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str


class RepositoryModelRequest(BaseModel):
    """load / unload: `parameters` of Triton's request (config and files are refused)."""

    repository_name: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
