"""Reshape-14/19/21 (types only changed since Reshape-14), with ``allowzero`` handled.

    allowzero=0: a 0 in ``shape`` copies the input's dimension at that position
    allowzero=1: a 0 in ``shape`` is a literal 0 -- exactly torch.reshape's own rule

onnx2torch's Reshape-14 refuses allowzero=1, yet the dynamo exporter sets it on every Reshape;
when the shape is a constant without zeros the two modes coincide, so the importer converts such
nodes as allowzero=0 (see ``onnxprune.importing.importer._conversion_view``).
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

_RESHAPE_14 = get_converter(operation_type="Reshape", version=14)


class ReshapeAllowZero(torch.nn.Module):
    """Reshape with allowzero=1: ``shape`` is taken literally (0 means an empty axis)."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(d) for d in shape.tolist()])


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if node.attributes.get("allowzero", 0) == 1:
        return OperationConverterResult(ReshapeAllowZero(), onnx_mapping_from_node(node))
    return _RESHAPE_14(node, graph)


for _version in (19, 21):
    add_converter(operation_type="Reshape", version=_version)(_convert)
# Reshape-14 with allowzero=1 and a shape computed in the graph (the dynamo exporter's attention
# reshapes [B, T, heads, d] of a model with dynamic axes): onnx2torch's own converter refuses
# it; ours takes its registry key over and keeps the stock converter for every other case.
_CONVERTER_REGISTRY.pop(OperationDescription(domain="", operation_type="Reshape", version=14))
add_converter(operation_type="Reshape", version=14)(_convert)
