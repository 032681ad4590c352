"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`
(server/grpc/proto), served on ELF_GRPC_PORT next to HTTP, in the same event loop and on the
same models, batchers, limits, metrics and error messages (server/grpc/server.py)."""
