"""Fold shape arithmetic that reads only static dimensions into constants.

Exporters compute some Slice bounds from the runtime shape even when the dimension they read
is fixed by the weights. Ultralytics' C2f block, ``y = list(self.cv1(x).chunk(2, 1))``,
exported by TorchScript with a dynamic batch, gives

    c = Gather(Shape(h), 1)                       (h = cv1's output, c its channel count)
    Slice(h, 0, (c + 1) / 2 * 1, axes 1)          and          Slice(h, (c + 1) / 2, (c + 1) / 2 * 2, axes 1)

A Slice with computed bounds freezes its channels, and with it the whole C2f block. Yet c is
cv1's output count: shape inference finds it static, while only the batch is dynamic. So every
bound here is a constant, and folded, the C2f split becomes a plain channel split.

Each int tensor computed from a ``Shape`` gets a value known element by element:

    Shape(x)[start:end]                      x's dims from shape inference (symbolic or missing: unknown)
    Gather(v, constant indices, axis 0)      the selected elements of v
    any other op, all inputs known           evaluated by the ONNX reference evaluator

The starts/ends/axes/steps of a Slice, and the sizes of a Split, whose values are fully known
become initializers, and so do the sizes a Split-18 ``num_outputs`` stands for on a static axis
(the dynamo exporter's ``chunk``: ``ceil(d / n)`` each, the last one the rest). The Shape/Gather/arithmetic nodes that fed them and have no other reader
are removed. This is exact: a folded value depends only on dims that shape inference proved
static, and a static dim of a graph input is part of the model's contract (onnxruntime refuses
an input that differs from it).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.names import OnnxNames

_LOG = logging.getLogger(__name__)

#: The inputs of an op that become constants when their value is known: (op, input positions).
_FOLDED_INPUTS = {"Slice": (1, 2, 3, 4), "Split": (1,)}
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def evaluate_node(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray] | None:
    """``node``'s outputs by the ONNX reference evaluator, from ``values`` of all its inputs;
    None for a node that is not a plain deterministic ai.onnx op, or that fails to evaluate."""
    from onnx.reference import ReferenceEvaluator

    if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM_OPS or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None
    feeds = [numpy_helper.from_array(np.asarray(values[name]), name) for name in dict.fromkeys(i for i in node.input if i)]
    try:
        single = helper.make_model(
            helper.make_graph([node], "fold", [], [helper.make_empty_tensor_value_info(o) for o in node.output if o], feeds),
            opset_imports=[helper.make_opsetid("", opset)])
        return [np.asarray(r) for r in ReferenceEvaluator(single).run(None, {})]
    except Exception as exc:  # noqa: BLE001 -- not foldable: the node stays as it is
        _LOG.debug("normalize: %s %r not evaluated (%s)", node.op_type, node.name, exc)
        return None


def fold_static_shape_bounds(model: onnx.ModelProto) -> int:
    """Fold the Slice bounds and Split sizes of ``model`` (shape-inferred, edited in place) that
    are computed from static dims only (module docstring). Returns the number of inputs folded."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return 0
    known = _known_values(graph, opset)
    names = OnnxNames.of_proto(graph)
    initializers = {init.name for init in graph.initializer}
    folded = 0
    for node in graph.node:
        for position in _FOLDED_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if position >= len(node.input) or not node.input[position]:
                continue
            value = known.get(node.input[position])
            if value is None or node.input[position] in initializers:
                continue
            name = names.fresh(f"{node.name or node.op_type}_folded_{position}")
            graph.initializer.append(numpy_helper.from_array(value.astype(np.int64), name))
            _LOG.info("normalize: %s %r input %d is computed from static dims only; folded to %s",
                      node.op_type, node.name, position, value.tolist())
            node.input[position] = name
            folded += 1
    folded += _split_sizes_from_num_outputs(graph, _static_dims(graph), names, initializers)
    if folded:
        from onnxprune.importing.normalize import drop_dead_nodes

        drop_dead_nodes(graph)
    return folded


def _known_values(graph: onnx.GraphProto, opset: int) -> dict[str, np.ndarray]:
    """Every int tensor whose value is fully known (module docstring), by name."""
    dims = _static_dims(graph)
    partial: dict[str, list[int | None]] = {}  # Shape values, element by element
    known: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                                    if init.data_type in (TensorProto.INT64, TensorProto.INT32)}
    for node in graph.node:  # graph order is topological
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        out = node.output[0]
        if node.op_type == "Shape" and node.input[0] in dims:
            attrs = {a.name: a.i for a in node.attribute}
            shape = dims[node.input[0]]
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            partial[out] = shape[start:end]
        elif node.op_type == "Gather" and node.input[0] in partial and node.input[1] in known:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0:
                picked = np.asarray(np.asarray(partial[node.input[0]], dtype=object)[known[node.input[1]]], dtype=object)
                if all(v is not None for v in picked.reshape(-1)):
                    known[out] = picked.astype(np.int64)
        elif node.op_type != "Shape" and all(i in known for i in node.input if i) and any(node.input):
            results = evaluate_node(node, known, opset)
            if results is not None:
                for name, value in zip((o for o in node.output if o), results):
                    if value.dtype.kind in "iu":
                        known[name] = value
        if out in partial and all(v is not None for v in partial[out]):
            known[out] = np.asarray(partial[out], dtype=np.int64)
    return known


def _static_dims(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    """Each value's dims as shape inference recorded them; a symbolic or unknown dim is None."""
    dims = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    for init in graph.initializer:
        dims[init.name] = list(init.dims)
    return dims


def _split_sizes_from_num_outputs(graph: onnx.GraphProto, dims, names: OnnxNames, initializers: set[str]) -> int:
    """Split-18's ``num_outputs`` (the dynamo exporter's ``chunk``) on a static axis becomes the
    explicit sizes it stands for: ``ceil(d / n)`` each, the last one the rest (the ONNX spec)."""
    folded = 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if (node.op_type != "Split" or node.domain not in ("", "ai.onnx") or "num_outputs" not in attrs
                or (len(node.input) > 1 and node.input[1])):
            continue
        shape = dims.get(node.input[0])
        axis = attrs["axis"].i if "axis" in attrs else 0
        if shape is None or not -len(shape) <= axis < len(shape) or shape[axis] is None:
            continue
        total, count = shape[axis], attrs["num_outputs"].i
        chunk = -(-total // count)
        sizes = [chunk] * (count - 1) + [total - chunk * (count - 1)]
        if sizes[-1] < 0:
            continue
        name = names.fresh(f"{node.name or 'Split'}_sizes")
        graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, dtype=np.int64), name))
        initializers.add(name)
        del node.input[1:]
        node.input.append(name)
        node.attribute.remove(attrs["num_outputs"])
        _LOG.info("normalize: Split %r num_outputs=%d on a static axis; sizes %s", node.name, count, sizes)
        folded += 1
    return folded
