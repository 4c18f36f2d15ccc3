"""Reduce*-18 (and ReduceMax/ReduceMin-20): ``axes`` moved from an attribute to an optional input.

    y = reduce_op(x, axes, keepdims)
    axes absent or empty: reduce over all axes, unless noop_with_empty_axes=1 (then y = x)

The axes input must be a constant (initializer or Constant); a data-dependent axes input is
refused. ReduceMax/ReduceMin-20 only add bool/bfloat16 types.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from onnxprune.importing.converters._common import const_input, input_rank, refuse

_OPS_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
           "ReduceMin", "ReduceProd", "ReduceSumSquare")


class ReduceNoop(torch.nn.Module):
    """noop_with_empty_axes=1 with no axes: the input passes through unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _convert(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:
    try:
        axes = const_input(node, graph, 1)
    except KeyError:
        raise refuse(node, version, "axes must be a constant input") from None
    axes_list = None if axes is None or axes.numel() == 0 else [int(a) for a in axes.reshape(-1)]
    if axes_list is not None and any(a < 0 for a in axes_list):
        # onnx2torch's ReduceMax/Min/Prod loop over sorted axes and mis-count negative ones.
        rank = input_rank(node, graph)
        if rank is None:
            raise refuse(node, version, "negative axes need a known input rank")
        axes_list = [a % rank for a in axes_list]
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    if axes_list is None and node.attributes.get("noop_with_empty_axes", 0) == 1:
        return OperationConverterResult(torch_module=ReduceNoop(), onnx_mapping=mapping)
    module = OnnxReduceStaticAxes(
        operation_type=node.operation_type, axes=axes_list, keepdims=node.attributes.get("keepdims", 1)
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


for _op in _OPS_18:
    add_converter(operation_type=_op, version=18)(lambda n, g: _convert(n, g, 18))
for _op in ("ReduceMax", "ReduceMin"):
    add_converter(operation_type=_op, version=20)(lambda n, g: _convert(n, g, 20))
