"""Clip-11/12/13 with bounds computed in the graph (onnxprune.importing.converters.clip): real
exports of torch.clamp with a computed bound and of sentence-transformers' mean pooling, by both
exporters, and hand-written graphs for the optional-bound and lo > hi cases; torch (via
import_model) against onnxruntime, atol 1e-5 / rtol 1e-4."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx.parser
import pytest
import torch

from onnxprune.graph.verify import run_onnxruntime
from onnxprune.importing.converters.clip import ClipDynamic
from onnxprune.importing.importer import import_model, run_torch

ATOL, RTOL = 1e-5, 1e-4


class ComputedBounds(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=x.mean(), max=x.max() * 0.5)


class MeanPooling(torch.nn.Module):
    """sentence-transformers' Pooling (mean): token sum over the mask / clamp(mask count, 1e-9)."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(tokens.dtype).expand(tokens.shape)
        count = torch.clamp(weights.sum(1), min=1e-9)
        return (tokens * weights).sum(1) / count


def _export(module: torch.nn.Module, args: tuple, dynamo: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=dynamo, opset_version=18, verbose=False)
    return onnx.load_from_string(buffer.getvalue())


def _matches(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    imported = import_model(model)
    expected = run_onnxruntime(model, feeds)
    actual = run_torch(imported, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)


def _computed_clips(model: onnx.ModelProto) -> int:
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Clip" and any(b and b not in constants for b in n.input[1:]))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_clamp_with_computed_bounds(dynamo):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    model = _export(ComputedBounds(), (torch.from_numpy(x),), dynamo)
    if not dynamo:  # the TorchScript exporter writes Clip(x, Cast(mean), Cast(max * 0.5))
        assert _computed_clips(model) == 1
    _matches(model, {model.graph.input[0].name: x})


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_mean_pooling_export(dynamo):
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((2, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.int64)  # an all-padding row hits the clamp
    model = _export(MeanPooling(), (torch.from_numpy(tokens), torch.from_numpy(mask)), dynamo)
    assert any(n.op_type == "Clip" for n in model.graph.node)  # a constant bound here; computed above
    names = [i.name for i in model.graph.input]
    _matches(model, dict(zip(names, [tokens, mask])))


@pytest.mark.parametrize("bounds, lo_hi", [
    ('lo = ReduceMin<keepdims = 0>(x)\n y = Clip(x, lo)', None),
    ('hi = ReduceMean<keepdims = 0>(x)\n y = Clip(x, "", hi)', None),
    ('lo = ReduceMax<keepdims = 0>(x)\n hi = ReduceMin<keepdims = 0>(x)\n y = Clip(x, lo, hi)', "lo>hi"),
])
def test_hand_written_bounds(bounds, lo_hi):
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 13]>'
                                    f"g (float[3, 4] x) => (float[3, 4] y) {{ {bounds} }}")
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    imported = import_model(model)
    assert any(isinstance(m, ClipDynamic) for m in imported.module.modules())
    _matches(model, {"x": x})
    if lo_hi:  # the spec: lo > hi gives hi everywhere
        np.testing.assert_array_equal(run_onnxruntime(model, {"x": x})[0], np.full_like(x, x.min()))


def test_constant_bounds_keep_stock_modules():
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 13]>'
                                    "g (float[3, 4] x) => (float[3, 4] y) {"
                                    " lo = Constant<value = float {0.0}>()\n hi = Constant<value = float {6.0}>()\n"
                                    " y = Clip(x, lo, hi) }")
    imported = import_model(model)
    assert any(isinstance(m, torch.nn.ReLU6) for m in imported.module.modules())
    _matches(model, {"x": np.linspace(-8, 8, 12, dtype=np.float32).reshape(3, 4)})
