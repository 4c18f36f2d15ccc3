"""Shared helpers for our onnx2torch converters.

A converter either returns an ``OperationConverterResult`` or raises :func:`refuse`, an
``UnsupportedModelError`` naming the op type, its version and the node, so the importer can list
every op it cannot convert in one message.
"""

from __future__ import annotations

from typing import Any

import torch
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import get_const_value

from onnxprune.errors import UnsupportedModelError


def refuse(node: OnnxNode, version: int, reason: str) -> UnsupportedModelError:
    """The error a converter raises for a node it cannot convert faithfully."""
    name = node.name or "<unnamed>"
    return UnsupportedModelError(f"{node.operation_type}-{version} (node {name}): {reason}")


def reuse(operation_type: str, old_version: int, *new_versions: int) -> None:
    """Register onnx2torch's converter for ``old_version`` under versions whose semantics match."""
    converter = get_converter(operation_type=operation_type, version=old_version)
    for version in new_versions:
        add_converter(operation_type=operation_type, version=version)(converter)


def const_input(node: OnnxNode, graph: OnnxGraph, index: int) -> torch.Tensor | None:
    """The constant value of input ``index``; None when the input is absent or empty."""
    if index >= len(node.input_values) or node.input_values[index] == "":
        return None
    try:
        value: Any = get_const_value(node.input_values[index], graph)
    except KeyError:
        raise KeyError(node.input_values[index]) from None
    return torch.as_tensor(value)


def input_rank(node: OnnxNode, graph: OnnxGraph, index: int = 0) -> int | None:
    """Rank of an input from shape inference, None when unknown."""
    info = graph.value_info.get(node.input_values[index])
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)
