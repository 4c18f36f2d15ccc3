"""AveragePool-19: new ``dilations`` attribute.

With all dilations 1 the op is AveragePool-11 (onnx2torch's converter); torch's AvgPool has no
dilation, so any other dilation is refused.
"""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from onnxprune.importing.converters._common import refuse

_AVERAGE_POOL_11 = get_converter(operation_type="AveragePool", version=11)


@add_converter(operation_type="AveragePool", version=19)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    dilations = node.attributes.get("dilations", [])
    if any(d != 1 for d in dilations):
        raise refuse(node, 19, f"dilations={list(dilations)} are not supported (torch AvgPool has none)")
    return _AVERAGE_POOL_11(node, graph)
