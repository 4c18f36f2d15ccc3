"""Clip-11/12/13 with bounds computed in the graph.

    y = min(max(x, lo), hi)       lo, hi: optional 0-D inputs (absent or "" = unbounded)
    lo > hi gives hi everywhere (the spec's rule, and torch.clamp's)

onnx2torch converts Clip only when both bounds are constants and raises "Dynamic value of
min/max is not implemented" otherwise. Exports of sentence-transformers' mean pooling,
``sum(tokens * mask) / clamp(mask.sum(1), min=1e-9)``, can compute the bound in the graph
(a Cast or a Constant routed through other ops), so such a model was refused at import.

Constant bounds keep onnx2torch's own modules (ReLU, ReLU6, a clamp with Python floats); a
bound that is not constant becomes an input of :class:`ClipDynamic`, which clamps with tensors
(torch.clamp broadcasts a 0-D bound over the input, as ONNX's Clip does).
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from onnxprune.importing.converters._common import refuse

_VERSIONS = (11, 12, 13)


class ClipDynamic(torch.nn.Module):
    """clamp(x, lo, hi) with either bound a tensor input of the graph (or absent)."""

    def __init__(self, has_min: bool, has_max: bool) -> None:
        super().__init__()
        self.has_min, self.has_max = has_min, has_max

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        bounds_left = list(bounds)
        low = bounds_left.pop(0).to(x.dtype) if self.has_min else None
        high = bounds_left.pop(0).to(x.dtype) if self.has_max else None
        if low is not None and high is not None:
            # torch.clamp with lo > hi already returns hi; min(max(x, lo), hi) states it plainly
            return torch.minimum(torch.maximum(x, low), high)
        return torch.clamp(x, min=low, max=high)


def _converter(version: int, stock):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        try:
            return stock(node, graph)  # both bounds constant (or absent): onnx2torch's own module
        except NotImplementedError:
            pass  # a bound computed in the graph, or an empty-name input ("" = no bound)
        names = list(node.input_values[1:3])
        names += [""] * (2 - len(names))
        for name in names:
            if name and not _is_scalar(name, graph):
                raise refuse(node, version, f"bound {name!r} must be a scalar (0-D or one element)")
        inputs = (node.input_values[0], *(name for name in names if name))
        module = ClipDynamic(has_min=bool(names[0]), has_max=bool(names[1]))
        return OperationConverterResult(module, OnnxMapping(inputs=inputs, outputs=node.output_values))

    return convert


def _is_scalar(name: str, graph: OnnxGraph) -> bool:
    if name in graph.initializers:
        return graph.initializers[name].to_torch().numel() == 1
    info = graph.value_info.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return True  # the spec requires a scalar; onnxruntime refuses anything else at run time
    dims = info.type.tensor_type.shape.dim
    return all(d.HasField("dim_value") and d.dim_value == 1 for d in dims)


for _version in _VERSIONS:
    # onnx2torch registers Clip-11/12/13 itself and its registry refuses a second registration:
    # our converter wraps the stock one (kept for constant bounds) and takes the key over.
    _stock = get_converter(operation_type="Clip", version=_version)
    _CONVERTER_REGISTRY.pop(OperationDescription(domain="", operation_type="Clip", version=_version))
    add_converter(operation_type="Clip", version=_version)(_converter(_version, _stock))
