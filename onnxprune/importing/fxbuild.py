"""Build a torch.fx module from an ONNX graph with onnx2torch's converters, and the name map.

One fx node per ONNX node (``call_module`` on the converter's module), initializers read by a
converted module through ``get_attr`` on one ``initializers`` container. For every float
initializer that ends up in torch, ``params[name] = ParamRef(module_path, attr, transpose)`` with

    getattr(module.get_submodule(module_path), attr)  ==  initializer       (transpose=False)
    getattr(...).T                                    ==  initializer       (transpose=True)

bit for bit, checked here when the map is made. Converters that fold weights into their module
(Conv, Gemm -> nn.Linear, BatchNorm, LayerNorm, InstanceNorm) are mapped through ``_ABSORBED``;
everything else reads its initializers from the container, where float initializers feeding
weight-bearing ops become ``nn.Parameter``s and the rest buffers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from operator import getitem

import numpy as np
import onnx
import torch
from onnx import defs, numpy_helper
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph, ValueType
from torch import fx, nn

import onnxprune.importing.converters  # noqa: F401  (registers our converters)
from onnxprune.errors import UnsupportedModelError
from onnxprune.graph.names import CONTAINER, TorchNames

# Ops whose float initializer inputs are weights worth training. Matrix-like ops train every
# float initializer; element-wise ops only multi-element ones (a per-channel bias or scale, not
# the 0.5 inside a GELU).
_MATRIX_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "PRelu", "Einsum", "LayerNormalization",
               "InstanceNormalization", "GroupNormalization", "LSTM", "GRU", "RNN"}
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Where"}
# Inputs that are statistics, not weights: kept as buffers.
_STATISTIC_INPUTS = {("BatchNormalization", 3), ("BatchNormalization", 4)}
_BN_WEIGHTS = {("BatchNormalization", 1), ("BatchNormalization", 2)}

# Initializers that converters fold into a torch module: op -> {input index: attribute}.
_ABSORBED = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
}


@dataclass(frozen=True)
class ParamRef:
    """Where an ONNX initializer lives in the torch module; ``transpose``: torch holds W^T."""

    module_path: str
    attr: str
    transpose: bool = False


def _op_label(node: onnx.NodeProto, opset: dict[str, int]) -> str:
    """``Op-since_version`` for a known ONNX op, the bare op type for an unknown one."""
    try:
        version = defs.get_schema(node.op_type, max_inclusive_version=opset.get(node.domain, 1),
                                  domain=node.domain).since_version
    except (defs.SchemaError, RuntimeError):
        return node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
    return f"{node.op_type}-{version}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_trainable(init: onnx.TensorProto, uses: list[tuple[str, int]]) -> bool:
    numel = int(np.prod(init.dims)) if init.dims else 1
    for op_type, index in uses:
        if (op_type, index) in _STATISTIC_INPUTS:
            continue
        if op_type in _MATRIX_OPS or (op_type, index) in _BN_WEIGHTS:
            return True
        if op_type in _ELEMENTWISE_OPS and numel > 1:
            return True
    return False


def conversion_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """The static-shape copy the converters read; only provably irrelevant attributes change.

    Reshape(allowzero=1) with a constant shape holding no 0 computes the same as allowzero=0,
    which onnx2torch's Reshape-14 converter needs (the dynamo exporter always sets allowzero=1).
    """
    consts = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if np.all(numpy_helper.to_array(consts[node.input[1]]) != 0):
            kept = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 1)]
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


def build_module(
    model: onnx.ModelProto,
) -> tuple[fx.GraphModule, dict[str, ParamRef], tuple[str, ...], TorchNames]:
    """The fx module, the initializer map, the frozen float initializers and the name tables.

    Torch names come from one :class:`onnxprune.graph.names.TorchNames` (safe, unique, bijective);
    ONNX names never become torch attribute names directly.
    """
    graph = OnnxGraph(model.graph)
    opset = {o.domain or "": o.version for o in model.opset_import}
    opset.setdefault("ai.onnx", opset.get("", 1))
    inits = {init.name: init for init in model.graph.initializer}
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, index))

    torch_graph = fx.Graph()
    root = nn.Module()
    container = nn.Module()
    root.add_module(CONTAINER, container)
    torch_names = TorchNames()
    values: dict[str, fx.Node] = {}
    params: dict[str, ParamRef] = {}
    failures: list[str] = []

    for name in (v.name for v in model.graph.input if v.name not in inits):
        values[name] = torch_graph.placeholder(torch_names.input(name))

    def initializer_node(name: str) -> fx.Node:
        if name not in values:
            tensor = torch.from_numpy(numpy_helper.to_array(inits[name]).copy())
            attr = torch_names.tensor(name)
            if tensor.is_floating_point() and _is_trainable(inits[name], uses.get(name, [])):
                container.register_parameter(attr, nn.Parameter(tensor))
            else:
                container.register_buffer(attr, tensor)
            if tensor.is_floating_point():
                params[name] = ParamRef(CONTAINER, attr)
            values[name] = torch_graph.get_attr(f"{CONTAINER}.{attr}")
        return values[name]

    for position, (unique_name, onnx_node) in enumerate(graph.nodes.items()):
        node = onnx_node.proto
        label = f"{_op_label(node, opset)} (node {node.name or unique_name})"
        module_name = torch_names.node(position, node)
        try:
            converter = get_converter(node.op_type, opset.get(node.domain, 1), domain=node.domain)
        except NotImplementedError:
            failures.append(label)
            continue
        try:
            torch_module, mapping = converter(onnx_node, graph)
        except UnsupportedModelError as exc:
            failures.append(f"{label}: {str(exc).split(': ', 1)[-1]}")
            continue
        except Exception as exc:  # a converter bug or unsupported attribute, reported per node
            failures.append(f"{label}: {first_line(exc)}")
            continue
        try:
            absorbed = _absorbed_params(node, onnx_node, torch_module, module_name, mapping.inputs, inits)
        except UnsupportedModelError as exc:
            failures.append(f"{label}: {exc}")
            continue
        if failures:
            continue  # keep collecting failures; the graph will not be built
        root.add_module(module_name, torch_module)
        params.update(absorbed)
        args = []
        for value_name in mapping.inputs:
            kind = graph.value_type(value_name)
            if kind == ValueType.GRAPH_INITIALIZER and value_name not in values:
                args.append(initializer_node(value_name))
            elif kind == ValueType.EMPTY:
                args.append(None)
            else:
                args.append(values[value_name])
        kwargs = {}
        if None in args:  # skipped optional inputs go by keyword, as onnx2torch does
            first = args.index(None)
            names = tuple(inspect.signature(torch_module.forward).parameters)[first:len(args)]
            kwargs = {k: v for k, v in zip(names, args[first:]) if v is not None}
            args = args[:first]
        call = torch_graph.call_module(module_name, args=tuple(args), kwargs=kwargs)
        if len(mapping.outputs) == 1:
            values[mapping.outputs[0]] = call
        else:
            for index, out_name in enumerate(mapping.outputs):
                if out_name:
                    values[out_name] = torch_graph.call_function(getitem, args=(call, index))

    if failures:
        raise UnsupportedModelError(f"cannot convert {len(failures)} ops: " + ", ".join(failures))
    outputs = []
    for value in model.graph.output:
        outputs.append(initializer_node(value.name) if value.name in inits and value.name not in values
                       else values[value.name])
    torch_graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    torch_graph.lint()
    module = fx.GraphModule(root, torch_graph)
    frozen = tuple(
        name for name, init in inits.items()
        if name not in params and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                       onnx.TensorProto.FLOAT16) and name in uses
    )
    return module, params, frozen, torch_names


def _absorbed_params(
    node: onnx.NodeProto, onnx_node, torch_module: nn.Module, module_path: str,
    mapped_inputs: tuple[str, ...], inits: dict[str, onnx.TensorProto],
) -> dict[str, ParamRef]:
    """ParamRefs for initializers a converter folded into ``torch_module``, checked bit-exactly."""
    table = _ABSORBED.get(node.op_type, {})
    found: dict[str, ParamRef] = {}
    for index, name in enumerate(node.input):
        if not name or name not in inits or name in mapped_inputs or index not in table:
            continue
        attr = table[index]
        owner_path, owner = module_path, torch_module
        if not hasattr(owner, attr):  # e.g. Conv wrapped in Sequential(pad, conv)
            for child_name, child in torch_module.named_children():
                if isinstance(getattr(child, attr, None), torch.Tensor):
                    owner_path, owner = f"{module_path}.{child_name}", child
        transpose = node.op_type == "Gemm" and index == 1 and not onnx_node.attributes.get("transB", 0)
        ref = ParamRef(owner_path, attr, transpose)
        live = getattr(owner, attr, None)
        expected = numpy_helper.to_array(inits[name])
        got = None if live is None else (live.t() if transpose else live).detach().numpy()
        if got is None or got.shape != expected.shape or not np.array_equal(got, expected):
            raise UnsupportedModelError(
                f"initializer {name!r} is not stored verbatim in the torch module (e.g. Gemm alpha/beta "
                f"!= 1), so it could not be written back"
            )
        found[name] = ref
    return found
