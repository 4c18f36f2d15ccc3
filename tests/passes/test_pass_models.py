"""Random 50% plans on real models: torchvision (both exporters) and the bundled sample models.

Each rewritten model passes the full checker, runs in onnxruntime, equals the masked
reference (atol 1e-5, rtol 1e-4) and has exactly the MACs the analysis predicted (counted by
``onnxprune.graph.macs.count_macs``). The full set (larger inputs, more models) is in
``benchmarks/passes_random_plans.py``.
"""

from __future__ import annotations

import io
import warnings

import onnx
import pytest

from onnxprune.passes import analyze
from onnxprune.passes.testing import check_exact, random_plan

SAMPLES = ("mlp", "resnet", "mobilenet", "vgg", "transformer")


def export_torchvision(name: str, size: int, dynamo: bool, small_head: bool = False) -> onnx.ModelProto:
    """A torchvision model (random weights, random BatchNorm statistics) exported to ONNX.

    ``small_head`` swaps VGG's 120M-parameter classifier for Flatten -> Linear(512, 10) (tests
    stay fast; the convolutional body is unchanged).
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    if small_head:
        net.avgpool = torch.nn.Identity()
        net.classifier = torch.nn.Linear(512 * (size // 32) ** 2, 10)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # fresh BN is the identity: masking would be trivial
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(net, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                                     verbose=False).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("name, size, dynamo, small_head", [
    ("resnet18", 32, False, False), ("mobilenet_v2", 32, False, False), ("vgg11", 64, False, True),
    ("resnet18", 32, True, False),
])
def test_torchvision_random_half_plan_is_exact(name: str, size: int, dynamo: bool, small_head: bool) -> None:
    from onnxprune.importing.normalize import normalize

    model = normalize(export_torchvision(name, size, dynamo, small_head))
    analysis = analyze(model)
    frozen = [g for g in analysis.groups if not g.prunable]
    assert len(frozen) <= 2, frozen  # the classifier (and vgg's adaptive pool under dynamo)
    plan = random_plan(analysis, seed=0, fraction=0.5, branch_fraction=0.3)
    checked = check_exact(model, plan, analysis=analysis)
    assert checked.macs == checked.predicted_macs < 0.5 * analysis.total_macs


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_model_random_half_plan_is_exact(sample_models_dir, name: str) -> None:
    from onnxprune.importing.importer import import_model

    path = sample_models_dir / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not built")
    model = import_model(onnx.load(path), {"image": (2, 1, 8, 8)}).onnx_model
    analysis = analyze(model, {"image": (2, 1, 8, 8)})
    assert analysis.prunable_groups
    plan = random_plan(analysis, seed=0, fraction=0.5, branch_fraction=0.5)
    checked = check_exact(model, plan, analysis=analysis)
    assert checked.macs == checked.predicted_macs < analysis.total_macs
