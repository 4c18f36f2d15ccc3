"""Fast slice of benchmarks/coverage_sweep.py's sweep: small torchvision classifiers at 64x64 through both
exporters at their default opset, imported (checked against onnxruntime) and written back unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision

from onnxprune.graph.verify import assert_close, run_onnxruntime
from onnxprune.importing.importer import import_model, run_torch
from onnxprune.importing.writeback import write_back
from tests.support.torch_models import export, give_realistic_scale


def _tiny_vit() -> torch.nn.Module:
    """torchvision's VisionTransformer in a small configuration (attention, GELU, LayerNorm)."""
    return torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


BUILDERS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10),
    "tiny_vit": _tiny_vit,
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_torchvision_export_imports_and_round_trips(name, dynamo):
    torch.manual_seed(0)
    model = give_realistic_scale(BUILDERS[name](), 64)  # else mobilenet's logits are ~1e-10
    x = torch.randn(1, 3, 64, 64)
    onnx_model = export(model, x, dynamo=dynamo, opset=None)
    imported = import_model(onnx_model)  # raises unless torch matches onnxruntime
    feeds = imported.sample_inputs(seed=0)
    reference = run_onnxruntime(onnx_model, feeds)
    assert np.abs(reference[0]).max() > 1e-3  # not a vacuous comparison
    assert_close(reference, run_torch(imported, feeds), what=f"{name} torch vs onnxruntime")
    with torch.no_grad():
        np.testing.assert_allclose(imported.module(torch.from_numpy(feeds[imported.input_names[0]])).numpy(),
                                   model(torch.from_numpy(feeds[imported.input_names[0]])).numpy(),
                                   atol=1e-5, rtol=1e-4)
    written = write_back(imported)
    onnx.checker.check_model(written, full_check=True)
    np.testing.assert_array_equal(run_onnxruntime(written, feeds)[0], reference[0])
