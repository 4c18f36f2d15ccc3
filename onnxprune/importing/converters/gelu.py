"""Gelu-20 and Mish-18 (new ops).

    Gelu(x) = x * Phi(x)                                           approximate="none"
    Gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      approximate="tanh"
    Mish(x) = x * tanh(softplus(x))

torch.nn.GELU and torch.nn.Mish implement exactly these.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

from onnxprune.importing.converters._common import refuse


@add_converter(operation_type="Gelu", version=20)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise refuse(node, 20, f"unknown approximate={approximate!r}")
    return OperationConverterResult(torch.nn.GELU(approximate=approximate), onnx_mapping_from_node(node))


@add_converter(operation_type="Mish", version=18)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(torch.nn.Mish(), onnx_mapping_from_node(node))
