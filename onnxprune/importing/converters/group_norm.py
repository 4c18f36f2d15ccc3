"""GroupNormalization-18 and -21 (new ops).

    y = scale * (x - mean_g) / sqrt(var_g + epsilon) + bias      over the channels of each group g

Version 21 takes per-channel scale and bias of shape [C], exactly torch's F.group_norm. Version
18 took per-group scale and bias of shape [num_groups]; each group's value is repeated over its
C / num_groups channels. ``stash_type`` (21) only names the precision of the statistics, which
torch computes in float32 for float32 inputs as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node


class GroupNorm(torch.nn.Module):
    """F.group_norm with scale/bias given per channel, or per group (``per_group``)."""

    def __init__(self, num_groups: int, epsilon: float, per_group: bool) -> None:
        super().__init__()
        self.num_groups, self.epsilon, self.per_group = num_groups, epsilon, per_group

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.per_group:
            repeat = x.shape[1] // self.num_groups
            scale, bias = scale.repeat_interleave(repeat), bias.repeat_interleave(repeat)
        return F.group_norm(x, self.num_groups, scale, bias, self.epsilon)


def _convert(node: OnnxNode, per_group: bool) -> OperationConverterResult:
    module = GroupNorm(node.attributes["num_groups"], node.attributes.get("epsilon", 1e-5), per_group)
    return OperationConverterResult(module, onnx_mapping_from_node(node))


@add_converter(operation_type="GroupNormalization", version=18)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _convert(node, per_group=True)


@add_converter(operation_type="GroupNormalization", version=21)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _convert(node, per_group=False)
