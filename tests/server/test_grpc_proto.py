"""The committed gRPC modules are what grpcio-tools generates from the committed .proto files,
and their descriptors are tritonclient's, byte for byte (both load in one process)."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from server.grpc.proto import grpc_service_pb2, model_config_pb2
from server.grpc.proto.__main__ import HERE, PROTOS, generate


def test_committed_modules_match_the_proto_files(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        p.name for p in HERE.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    )
    for path in written:
        committed = (HERE / path.name).read_text(encoding="utf-8")
        assert path.read_text(encoding="utf-8") == committed, f"regenerate: {path.name}"


def test_protos_keep_their_license_and_match_tritonclients_descriptors() -> None:
    for name in PROTOS:
        text = (HERE / name).read_text(encoding="utf-8")
        assert text.startswith("// Copyright") and "NVIDIA CORPORATION" in text.splitlines()[0]
    ours = grpc_service_pb2.DESCRIPTOR.serialized_pb, model_config_pb2.DESCRIPTOR.serialized_pb
    theirs = triton_service.DESCRIPTOR.serialized_pb, triton_config.DESCRIPTOR.serialized_pb
    assert ours == theirs
