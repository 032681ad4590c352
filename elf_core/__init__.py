"""The torch-free core every part imports: the rules that must not drift between training,
export, the server and the benchmarks.

- `manifest`: the model-directory contract (schema, loader, sha256 checks, model-name pattern).
- `exits`: softmax, per-exit threshold vectors and the exit rule itself.
- `flops`: FLOPs accounting of stages and of an exit mix.
- `accuracy`: balanced (mean per-class recall) and per-group accuracy, class groups.
- `calibration` and `threshold_search`: the threshold trade-off curve and its search.
- `providers`: which ONNX Runtime execution providers to ask for.

numpy and pydantic only: no torch, no onnx, no onnxruntime, and no import of training,
model_export, server or bench (pyproject's import contracts check this).
"""
