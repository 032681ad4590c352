"""Bring your own model: early exits retrofitted onto an existing ONNX classifier.

The backbone's graph is cut at a few intermediate tensors (cuts), an exit head is trained on the
features at each cut (computed once with ONNX Runtime), and every segment of the original graph
plus its head becomes one stage graph of the project's model-directory format.
"""

from model_export.retrofit.cuts import RetrofitError

__all__ = ["RetrofitError"]
