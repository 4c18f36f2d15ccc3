"""Split-18: new ``num_outputs`` attribute.

With a ``split`` input the sizes are given (as in Split-13). Without it the axis of length L is
cut into n = num_outputs pieces of ceil(L / n) elements, the last one holding the remainder
(Split-13 required equal pieces; torch.split with chunk size ceil(L/n) gives exactly this).
"""

from __future__ import annotations

import math

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from onnxprune.importing.converters._common import const_input, refuse


class Split18(torch.nn.Module):
    """Split along ``axis`` into fixed sizes, or into ``num_outputs`` ceil-sized chunks."""

    def __init__(self, axis: int, sizes: list[int] | None, num_outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.sizes = sizes
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.sizes is not None:
            return tuple(torch.split(x, self.sizes, dim=self.axis))
        chunk = math.ceil(x.shape[self.axis] / self.num_outputs)
        return tuple(torch.split(x, chunk, dim=self.axis))


@add_converter(operation_type="Split", version=18)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    try:
        split = const_input(node, graph, 1)
    except KeyError:
        raise refuse(node, 18, "the split input must be a constant") from None
    sizes = None if split is None else [int(s) for s in split.reshape(-1)]
    num_outputs = node.attributes.get("num_outputs", len(node.output_values))
    if sizes is None and num_outputs != len(node.output_values):
        raise refuse(node, 18, f"num_outputs={num_outputs} but the node has {len(node.output_values)} outputs")
    return OperationConverterResult(
        torch_module=Split18(axis=node.attributes.get("axis", 0), sizes=sizes, num_outputs=num_outputs),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )
