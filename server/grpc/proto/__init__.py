"""Triton's Open Inference Protocol gRPC definitions (grpc_service.proto, model_config.proto,
copied unmodified from github.com/triton-inference-server/common, protobuf/) and the Python
modules grpcio-tools generates from them (committed; `python -m server.grpc.proto` rewrites
them, tests/server/test_grpc_proto.py checks that they match)."""
