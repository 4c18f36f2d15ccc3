"""Shared fixtures: paths to the bundled sample models and small models written as ONNX text."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

# Tests share 2 cores in CI; one intra-op thread keeps timings predictable and avoids
# oversubscription when torch and onnxruntime run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MODELS = REPO / "sample_models"
SAMPLE_NAMES = ("mlp", "resnet", "mobilenet", "vgg", "transformer")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_models_dir() -> Path:
    return SAMPLE_MODELS


TINY_CONV_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,3,8,8] x) => (float[N,4] y) {
  c1 = Conv <pads = [1,1,1,1]> (x, w1, b1)
  r1 = Relu (c1)
  g = GlobalAveragePool (r1)
  f = Flatten (g)
  y = Gemm <transB = 1> (f, w2, b2)
}
"""


def make_tiny_conv(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-GAP-Gemm with random weights: the smallest model that exercises the pipeline."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(TINY_CONV_TEXT)
    weights = {
        "w1": rng.standard_normal((6, 3, 3, 3)).astype("float32"),
        "b1": rng.standard_normal(6).astype("float32"),
        "w2": rng.standard_normal((4, 6)).astype("float32"),
        "b2": rng.standard_normal(4).astype("float32"),
    }
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def tiny_conv_path(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(make_tiny_conv(), str(path))
    return path
