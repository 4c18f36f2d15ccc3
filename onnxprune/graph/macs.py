"""Multiply-accumulate (MAC) and parameter counts, measured on the ONNX graph.

Shapes come from :func:`onnxprune.graph.shapes.infer_static_shapes`. Counted, as the published figures
count them (resnet18: 1.82 GMAC at 224x224), are the ops whose cost is a product of weights and
activations:

    Conv            MACs = |Y| * (C_in / group) * prod(kernel)          (|Y|: output elements)
    ConvTranspose   MACs = |X| * (C_out / group) * prod(kernel)
    Gemm            MACs = M * N * K
    MatMul          MACs = prod(batch dims) * M * N * K  (also activation x activation, e.g. attention)
    Einsum          MACs = product of the sizes of all distinct indices

Normalization, activation, pooling and elementwise ops are not counted (they are memory-bound
and the convention leaves them out). Params are the elements of floating-point initializers and
of floating-point ``Constant`` nodes (Paddle and TF converters keep weights there; normalization
turns them into initializers, so a model counts the same before and after).
"""

from __future__ import annotations

import dataclasses
import math

import onnx
from onnx import helper

from onnxprune.graph.shapes import infer_static_shapes, resolve_input_shapes, static_shape_map

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


@dataclasses.dataclass(frozen=True)
class LayerCost:
    node: str
    op_type: str
    weight: str | None  # the initializer holding the layer's weight, if any
    weight_shape: tuple[int, ...] | None
    macs: int
    params: int


@dataclasses.dataclass(frozen=True)
class ModelCost:
    layers: list[LayerCost]
    total_macs: int
    total_params: int

    def by_node(self) -> dict[str, LayerCost]:
        return {layer.node: layer for layer in self.layers}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of all floating-point initializers and Constant nodes (shape constants and
    indices excluded)."""
    return sum(
        math.prod(tensor.dims) for tensor in _weights(model).values() if tensor.data_type in _FLOAT_TYPES
    )


def _weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and the tensors of main-graph Constant nodes (``value`` or ``value_float(s)``), by name."""
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        if attr.name == "value":
            tensors.setdefault(node.output[0], attr.t)
        elif attr.name in ("value_float", "value_floats"):
            count = 1 if attr.name == "value_float" else len(attr.floats)
            tensors.setdefault(node.output[0], onnx.TensorProto(
                data_type=onnx.TensorProto.FLOAT, dims=[] if attr.name == "value_float" else [count]))
    return tensors


def count_macs(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> ModelCost:
    """Per-layer MACs and params for every MAC-bearing node, plus model totals."""
    input_shapes = input_shapes or resolve_input_shapes(model)
    shaped = infer_static_shapes(model, input_shapes, weights=False)  # shapes only: no copy of large weights
    shapes = static_shape_map(shaped)
    initializers = _weights(model)
    layers = []
    for index, node in enumerate(model.graph.node):
        counter = _COUNTERS.get(node.op_type)
        if counter is None:
            continue
        macs = counter(node, shapes)
        weight = next((name for name in node.input[1:2] if name in initializers), None)
        params = sum(
            math.prod(initializers[name].dims)
            for name in node.input
            if name in initializers and initializers[name].data_type in _FLOAT_TYPES
        )
        layers.append(
            LayerCost(
                node=node.name or f"{node.op_type}_{index}",
                op_type=node.op_type,
                weight=weight,
                weight_shape=tuple(initializers[weight].dims) if weight else None,
                macs=int(macs),
                params=int(params),
            )
        )
    return ModelCost(layers, sum(layer.macs for layer in layers), count_params(model))


def _shape(shapes: dict[str, tuple[int, ...]], name: str, node: onnx.NodeProto) -> tuple[int, ...]:
    if name not in shapes:
        raise KeyError(f"no static shape for {name!r} (input of {node.op_type} node {node.name!r})")
    return shapes[name]


def _conv(node, shapes) -> int:
    weight = _shape(shapes, node.input[1], node)  # [C_out, C_in/group, k...]
    output = _shape(shapes, node.output[0], node)
    return math.prod(output) * math.prod(weight[1:])


def _conv_transpose(node, shapes) -> int:
    weight = _shape(shapes, node.input[1], node)  # [C_in, C_out/group, k...]
    inputs = _shape(shapes, node.input[0], node)
    return math.prod(inputs) * math.prod(weight[1:])


def _gemm(node, shapes) -> int:
    a = _shape(shapes, node.input[0], node)
    output = _shape(shapes, node.output[0], node)
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    k = a[0] if attrs.get("transA", 0) else a[1]
    return output[0] * output[1] * k


def _matmul(node, shapes) -> int:
    a = _shape(shapes, node.input[0], node)
    output = _shape(shapes, node.output[0], node)
    k = a[-1]
    return math.prod(output) * k


def _einsum(node, shapes) -> int:
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    equation = attrs["equation"].decode() if isinstance(attrs["equation"], bytes) else attrs["equation"]
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, name in zip(lhs, node.input):
        for letter, size in zip(term.replace("...", ""), _shape(shapes, name, node)[-len(term.replace("...", "")) :]):
            sizes[letter] = size
    return math.prod(sizes.values())


# ops whose weight (input 1) methods prune, by element or by channel: the one list of them
PRUNABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

_COUNTERS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Einsum": _einsum,
}


def format_count(value: float) -> str:
    """1234567 -> '1.23M' (K, M, G, T)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"
