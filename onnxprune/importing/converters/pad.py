"""Pad-18/19/21: an optional ``axes`` input (18) and mode ``wrap`` (19).

    y = pad(x, pads, constant_value, axes)
    pads = [b_1..b_k, e_1..e_k] for the k listed axes (all axes when ``axes`` is absent)

Without ``axes`` this is Pad-13 (converted by onnx2torch's dynamic Pad). With ``axes`` the pads
are expanded to every axis at conversion time, which needs constant pads/axes and a known input
rank. ``wrap`` has no torch padding mode and is refused.
"""

from __future__ import annotations

from onnx2torch.node_converters.pad import OnnxPadDynamic, OnnxPadStatic
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from onnxprune.importing.converters._common import const_input, input_rank, refuse

_TORCH_MODE = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _convert(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if mode not in _TORCH_MODE:
        raise refuse(node, version, f"mode={mode!r} has no torch equivalent")
    try:
        axes = const_input(node, graph, 3)
    except KeyError:
        raise refuse(node, version, "axes must be a constant input") from None
    if axes is None or axes.numel() == 0:
        inputs = tuple(node.input_values[:3])
        return OperationConverterResult(
            OnnxPadDynamic(mode=_TORCH_MODE[mode]), OnnxMapping(inputs=inputs, outputs=node.output_values)
        )
    rank = input_rank(node, graph)
    try:
        pads = const_input(node, graph, 1)
        value = const_input(node, graph, 2)
    except KeyError:
        raise refuse(node, version, "with axes, pads and constant_value must be constants") from None
    if rank is None:
        raise refuse(node, version, "with axes, the input rank must be known")
    full = [0] * (2 * rank)
    axes_list = [int(a) % rank for a in axes.reshape(-1)]
    pads_list = [int(p) for p in pads.reshape(-1)]
    for i, axis in enumerate(axes_list):
        full[axis] = pads_list[i]
        full[rank + axis] = pads_list[len(axes_list) + i]
    module = OnnxPadStatic.create_from_onnx_params(
        onnx_pads=full, onnx_mode=mode, constant_value=0.0 if value is None else float(value)
    )
    return OperationConverterResult(module, OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))


for _version in (18, 19, 21):
    add_converter(operation_type="Pad", version=_version)(lambda n, g, v=_version: _convert(n, g, v))
