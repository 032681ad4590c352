"""Versions that must agree across files: the GPU base image and onnxruntime-gpu, and torch.

onnxruntime-gpu is built against one CUDA major and one cuDNN major, and fails to load its CUDA
provider on any other; the GPU image's base must carry both. The training image installs the
torch version that pyproject.toml pins, before the project, from a named wheel index.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.dockerfiles import parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


# (CUDA major, cuDNN major) that the onnxruntime-gpu wheels on PyPI are built for. From the ONNX
# Runtime CUDA execution provider requirements (1.19-1.20: CUDA 12.x, cuDNN 9.x) and the wheels'
# own metadata (1.23.2 to 1.26.0 require nvidia-*-cu12 and nvidia-cudnn-cu12 ~= 9.0; 1.27.0 and
# 1.31.1 require the cu13 packages): CUDA 12 up to 1.26, CUDA 13 from 1.27.
def ort_gpu_cuda_cudnn(version: str) -> tuple[int, int]:
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) >= (1, 27):
        return 13, 9
    if (major, minor) >= (1, 19):
        return 12, 9
    raise ValueError(f"onnxruntime-gpu {version}: pin 1.19 or later (CUDA 12/13 with cuDNN 9)")


def cuda_image_cuda_cudnn(image: str) -> tuple[int, int]:
    """CUDA and cuDNN major versions of an nvidia/cuda `...-cudnn...-runtime-...` tag."""
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-cudnn(\d*)-runtime-ubuntu\d+\.\d+", image)
    if m is None:
        raise ValueError(f"{image}: not an nvidia/cuda cudnn runtime image")
    cuda, minor, cudnn = int(m.group(1)), int(m.group(2)), m.group(3)
    if cudnn:
        return cuda, int(cudnn)
    # Unnumbered `cudnn` tags carry cuDNN 9 from CUDA 12.4 on (libcudnn9-cuda-12 / -cuda-13).
    if (cuda, minor) >= (12, 4):
        return cuda, 9
    raise ValueError(f"{image}: cannot tell the cuDNN version of this tag")


def test_version_tables() -> None:
    assert ort_gpu_cuda_cudnn("1.26.0") == (12, 9)
    assert ort_gpu_cuda_cudnn("1.31.1") == (13, 9)
    assert cuda_image_cuda_cudnn("nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04") == (12, 9)
    assert cuda_image_cuda_cudnn("nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04") == (11, 8)
    with pytest.raises(ValueError):
        cuda_image_cuda_cudnn("nvidia/cuda:12.8.1-runtime-ubuntu24.04")  # no cuDNN at all


def test_gpu_base_image_matches_onnxruntime_gpu_pin() -> None:
    df = parse_dockerfile(DOCKER / "Dockerfile.gpu")
    args = df.all_args()
    pin = args["ONNXRUNTIME_GPU_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin), pin
    assert {s.base for s in df.stages} == {args["CUDA_IMAGE"]}
    assert cuda_image_cuda_cudnn(args["CUDA_IMAGE"]) == ort_gpu_cuda_cudnn(pin)
    runs = " ".join(i.args for s in df.stages for i in s.instructions if i.keyword == "RUN")
    assert '"onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"' in runs


def test_train_image_installs_the_pinned_torch_before_the_project() -> None:
    df = parse_dockerfile(DOCKER / "Dockerfile.train")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(
        d for d in pyproject["project"]["optional-dependencies"]["train"] if d.startswith("torch")
    )
    assert torch_pin == f"torch=={df.all_args()['TORCH_VERSION']}"
    runs = [i.args for i in df.final.instructions if i.keyword == "RUN"]
    # The local version pins the build: PyPI's plain torch==2.13.0 is a CUDA build.
    assert df.all_args()["TORCH_VARIANT"] == "cpu"
    assert df.all_args()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_at = next(
        k for k, r in enumerate(runs) if '"torch==${TORCH_VERSION}+${TORCH_VARIANT}"' in r
    )
    project_at = next(k for k, r in enumerate(runs) if 'pip install ".[train' in r)
    assert torch_at < project_at
    assert "--index-url" in runs[torch_at]
    assert any("dataset-fashion-mnist" in r for r in runs)
