"""Resize-18/19: new ``antialias``, ``axes`` and ``keep_aspect_ratio_policy`` attributes (18) and
coordinate mode ``half_pixel_symmetric`` (19).

With their defaults (antialias=0, no axes, keep_aspect_ratio_policy="stretch") and a coordinate
mode Resize-13 knows, the op is Resize-13 and onnx2torch's converter is used. Anything else is
refused: torch.nn.functional.interpolate has no matching option. Whether the interpolation mode
itself matches is checked numerically by the importer against onnxruntime.
"""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from onnxprune.importing.converters._common import refuse

_RESIZE_13 = get_converter(operation_type="Resize", version=13)


def _convert(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:
    attrs = node.attributes
    if attrs.get("antialias", 0) != 0:
        raise refuse(node, version, "antialias=1 is not supported")
    if "axes" in attrs:
        raise refuse(node, version, "the axes attribute is not supported")
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise refuse(node, version, f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']!r} is not supported")
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        raise refuse(node, version, "coordinate_transformation_mode='half_pixel_symmetric' is not supported")
    return _RESIZE_13(node, graph)


for _version in (18, 19):
    add_converter(operation_type="Resize", version=_version)(lambda n, g, v=_version: _convert(n, g, v))
