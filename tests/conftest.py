"""Shared fixtures: paths to the bundled sample models and small models written as ONNX text."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from tests.support.models import SAMPLE_MODELS, make_tiny_conv

# Tests share 2 cores in CI; one intra-op thread keeps timings predictable and avoids
# oversubscription when torch and onnxruntime run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture
def tiny_conv_path(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(make_tiny_conv(), str(path))
    return path
