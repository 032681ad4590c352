"""Features at the cuts, computed once with ONNX Runtime over a split and kept in memory.

One pass of the original graph (with the cut tensors added as outputs) gives, per image, every
cut's activation (stored as float16 to halve the memory) and the model's own final logits (the
distillation target).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from model_export.calibrate_run import iter_batches
from model_export.retrofit.cuts import Classifier, Cut
from model_export.runtime import normalize
from training.data import ImageDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureCache:
    features: list[np.ndarray]  # per cut: float16 [N, C, H, W]
    teacher: np.ndarray  # the original model's logits, float32 [N, num_classes]
    labels: np.ndarray  # int64 [N]


def with_cut_outputs(clf: Classifier, cuts: Sequence[Cut]) -> onnx.ModelProto:
    """The original graph, also returning every cut tensor (after its final output)."""
    model = onnx.ModelProto()
    model.CopyFrom(clf.model)
    for c in cuts:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(
                c.tensor, onnx.TensorProto.FLOAT, ["batch", *c.shape]
            )
        )
    return model


def compute_features(
    clf: Classifier,
    cuts: Sequence[Cut],
    data: ImageDataset,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    providers: Sequence[str],
    batch_size: int,
    desc: str,
    progress: bool,
) -> FeatureCache:
    sess = session_from_model(with_cut_outputs(clf, cuts), providers)
    n = len(data)
    feats = [np.empty((n, *c.shape), dtype=np.float16) for c in cuts]
    teacher = np.empty((n, clf.num_classes), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    start = 0
    for images, y in iter_batches(data, batch_size, desc, progress):
        outs = sess.run(None, {clf.input_name: normalize(images, mean, std)})
        end = start + len(y)
        teacher[start:end] = outs[0]
        for f, o in zip(feats, outs[1:], strict=True):
            f[start:end] = o
        labels[start:end] = y
        start = end
    mb = sum(f.nbytes for f in feats) / 2**20
    log.info("%s: features of %d images at %d cuts (%.0f MiB)", desc, n, len(cuts), mb)
    return FeatureCache(feats, teacher, labels)


def session_from_model(model: onnx.ModelProto, providers: Sequence[str]) -> ort.InferenceSession:
    """An ONNX Runtime session of an in-memory model (as runtime.session does for a file)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=list(providers)
    )
