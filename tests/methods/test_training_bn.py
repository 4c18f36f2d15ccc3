"""The BatchNorm re-inserted for the fine-tuning (methods/_support/training_bn.py): identity at the
start, an exact fold at the end, cut channels kept at exact zero, convs that already feed a BN
left alone, and the whole pipeline verified on a BN-folded export."""

from __future__ import annotations

import io

import onnx
import pytest
import torch

from onnxprune.importing.importer import import_model
from onnxprune.methods._support.channel_baselines import UniformChannels
from onnxprune.methods._support.training_bn import ReinsertedBatchNorm
from onnxprune.methods.base import TrainContext
from onnxprune.training.loop import prunable_weights
from tests.support.structured import SAMPLES, SHAPES, digits, run
from tests.support.torch_models import fit_classifier


def _bn_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


@pytest.fixture(scope="module")
def folded() -> onnx.ModelProto:
    """A digits CNN trained with BatchNorm and exported as exporters do: BN folded into the convs."""
    data = digits("train")
    x, y = torch.from_numpy(data.inputs["image"]), torch.from_numpy(data.labels)
    net = fit_classifier(_bn_cnn(), x, y, epochs=3)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x[:1],), buffer, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buffer.getvalue())
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    return model


def _context(model: onnx.ModelProto) -> TrainContext:
    imported = import_model(model, SHAPES)
    return TrainContext(model=imported.module, imported=imported, weights=prunable_weights(imported), analysis=None,
                        device=torch.device("cpu"), epochs=1, steps_per_epoch=1, lr=1e-3)


def test_identity_at_start_exact_fold_and_cut_channels_stay_zero(folded):
    ctx = _context(folded)
    model, x = ctx.model, torch.from_numpy(digits("test").inputs["image"])
    norms = ReinsertedBatchNorm(ctx)
    assert len(norms.convs) == 3
    first = next(iter(norms.convs.values()))
    with torch.no_grad():  # cut channel 3 of the first conv, as a gate of 0 does
        first.weight[3].zero_()
        first.bias[3].zero_()
    seen = {}
    first.register_forward_hook(lambda _m, _i, out: seen.__setitem__("first", out))
    model.eval()
    with torch.no_grad():
        before = model(x)
    norms.start(model, [x])
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-4)  # identity on these statistics

    opt = torch.optim.SGD([*model.parameters(), *norms.parameters()], lr=0.05)
    model.train()
    for i in torch.randperm(len(x)).split(32):  # a few steps with batch statistics
        opt.zero_grad()
        (model(x[i]) - before[i]).square().mean().backward()
        opt.step()
    assert not torch.allclose(next(iter(norms.norms.values())).weight, torch.ones(16))
    model.eval()
    with torch.no_grad():
        with_bn = model(x)
        assert seen["first"][:, 3].abs().max() == 0  # the cut channel is still an exact zero
        assert norms.fold(model) == 3  # no inputs: fold the running statistics as they are
        assert torch.allclose(model(x), with_bn, atol=1e-5, rtol=1e-4)  # conv + BN == the folded conv
        assert seen["first"][:, 3].abs().max() == 0 and not first.weight[3].any() and first.bias[3] == 0


def test_convs_that_feed_a_batchnorm_node_get_none():
    ctx = _context(onnx.load(str(SAMPLES / "resnet.onnx")))  # BN kept as nodes: frozen, not doubled
    assert ReinsertedBatchNorm(ctx).convs == {}


def test_pipeline_on_a_bn_folded_export_is_verified_and_folds_every_conv(folded):
    # run() applies the plan and asserts that onnxruntime on the pruned model equals the torch model
    method = UniformChannels(target_macs="0.5", channel_multiple=1, batchnorm=True)
    result = run("folded", method, epochs=2, original=folded)
    assert result["ctx"].metrics["batchnorm_folded"] == 3
    assert result["macs"] <= 0.5 * result["macs0"]
    assert result["accuracy"] > 0.8
    without = run("folded", UniformChannels(target_macs="0.5", channel_multiple=1), epochs=2,
                  original=folded)
    assert "batchnorm_folded" not in without["ctx"].metrics  # off by default
