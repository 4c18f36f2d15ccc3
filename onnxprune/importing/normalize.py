"""Normalize a user's ONNX graph so that every trainable weight is an initializer of its own.

Exporters hide weights in three ways that break training and write-back by name:

1. ``Constant`` nodes (Paddle, TF2ONNX, the TorchScript exporter for small tensors): the tensor
   in the ``value*`` attribute becomes an initializer named after the Constant's output.
2. ``Identity`` nodes reading an initializer (the TorchScript exporter shares equal initializers
   this way): the consumer reads a copy of the initializer under the Identity's output name and
   the Identity node is dropped.
3. One float initializer read by several ops: each further op gets its own copy, so that every
   op's weight can be trained and pruned independently (``W`` feeds op 1, ``W__1`` feeds op 2).
4. Layout ops on a float weight (Paddle adds a conv bias as ``Add(conv, Reshape(b, [1,C,1,1]))``
   or ``Unsqueeze(b)``): Reshape, Unsqueeze, Squeeze, Flatten, Transpose or Cast whose inputs are
   all initializers become an initializer named after their output, holding the same values in
   the new layout, so the bias is a per-channel constant of the Add like any other.
5. An ``If`` whose condition folds to a constant (an initializer, or computed only from
   initializers, e.g. ``Equal(c, 1)``): the node is replaced by the branch it takes. The branch's
   nodes and initializers move into the graph under fresh names (the If's outputs keep theirs;
   an output the branch passes through from outside becomes an ``Identity``). A branch holding
   control flow of its own is left as it is (the importer then refuses the If by name).
6. Slice bounds and Split sizes computed from static dims only (ultralytics' C2f ``chunk``
   exported with a dynamic batch slices at ``Shape(h)[1] / 2``) become initializers
   (:mod:`onnxprune.importing.shape_folding`), and the shape arithmetic left unread goes.

Values are copied, never changed, so the normalized graph computes exactly what the input graph
computes. Node names, graph inputs/outputs (names, dtypes, dynamic axes), opsets, and metadata
are kept; Constants or Identities whose output is a graph output are left in place. Shape
inference (non-strict) then records value shapes in ``value_info``.

Protobuf is edited directly rather than through onnx-ir so that everything we do not touch stays
byte-for-byte what the user gave us.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from onnxprune.graph.names import OnnxNames
from onnxprune.importing.shape_folding import evaluate_node, fold_static_shape_bounds

_LOG = logging.getLogger(__name__)

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a normalized copy of ``model`` (see the module docstring); ``model`` is not touched."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept_outputs = {value.name for value in graph.output}
    _constants_to_initializers(graph, kept_outputs)
    _fold_identities_of_initializers(graph, kept_outputs)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None:
        _fold_layout_ops_of_weights(graph, kept_outputs, opset)
        _fold_constant_ifs(graph, opset)
    _split_shared_float_initializers(graph)
    out = _infer_shapes(out)
    if fold_static_shape_bounds(out):  # step 6 reads the inferred dims, and changes shapes' sources
        out = _infer_shapes(out)
    return out


def _constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node produces, or None for sparse/string forms we leave alone."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
        value = helper.get_attribute_value(attr)
        dtype = np.float32 if "float" in attr.name else np.int64
        return numpy_helper.from_array(np.asarray(value, dtype=dtype))
    return None


def _constants_to_initializers(graph: onnx.GraphProto, kept_outputs: set[str]) -> None:
    keep = []
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None or node.output[0] in kept_outputs:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    if len(keep) != len(graph.node):
        _LOG.debug("normalize: %d Constant nodes became initializers", len(graph.node) - len(keep))
        del graph.node[:]
        graph.node.extend(keep)


def _fold_identities_of_initializers(graph: onnx.GraphProto, kept_outputs: set[str]) -> None:
    """Replace ``Identity(init) -> y`` by an initializer ``y`` holding a copy of ``init``."""
    initializers = {init.name: init for init in graph.initializer}
    removed = False
    changed = True
    while changed:  # chains Identity(Identity(init)) fold one link per round
        changed = False
        keep = []
        for node in graph.node:
            if (
                node.op_type == "Identity"
                and node.domain in ("", "ai.onnx")
                and node.input[0] in initializers
                and node.output[0] not in kept_outputs
                and node.output[0] not in initializers
            ):
                copy = TensorProto()
                copy.CopyFrom(initializers[node.input[0]])
                copy.name = node.output[0]
                graph.initializer.append(copy)
                initializers[copy.name] = graph.initializer[-1]
                changed = removed = True
                continue
            keep.append(node)
        if changed:
            del graph.node[:]
            graph.node.extend(keep)
    if removed:
        _drop_unused_initializers(graph)


_LAYOUT_OPS = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Cast"}


def _fold_layout_ops_of_weights(graph: onnx.GraphProto, kept_outputs: set[str], opset: int) -> None:
    """Replace ``Reshape(W, shape) -> y`` (and the other layout ops) of a float initializer ``W``
    by an initializer ``y``: the same values, laid out as the op lays them out."""
    from onnx.reference import ReferenceEvaluator

    inputs_declared = {value.name for value in graph.input}  # an initializer a feed may override
    initializers = {init.name: init for init in graph.initializer if init.name not in inputs_declared}
    keep, folded = [], 0
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if (
            node.op_type in _LAYOUT_OPS
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and inputs
            and all(name in initializers for name in inputs)
            and initializers[node.input[0]].data_type in _FLOAT_TYPES
            and node.output[0] not in kept_outputs
            and node.output[0] not in initializers
        ):
            try:
                single = helper.make_model(
                    helper.make_graph([node], "fold", [], [helper.make_empty_tensor_value_info(node.output[0])],
                                      [initializers[name] for name in dict.fromkeys(inputs)]),
                    opset_imports=[helper.make_opsetid("", opset)])
                (array,) = ReferenceEvaluator(single).run(None, {})
            except Exception as exc:  # noqa: BLE001 -- leave the node as it is
                _LOG.debug("normalize: %s %r not folded (%s)", node.op_type, node.name, exc)
                keep.append(node)
                continue
            tensor = numpy_helper.from_array(np.asarray(array), node.output[0])
            graph.initializer.append(tensor)
            initializers[tensor.name] = graph.initializer[-1]
            folded += 1
            continue
        keep.append(node)
    if folded:
        _LOG.debug("normalize: %d layout ops of weights became initializers", folded)
        del graph.node[:]
        graph.node.extend(keep)
        _drop_unused_initializers(graph)


_FOLD_DEPTH = 8  # how far back a condition's constant producers are followed


def _fold_constant_ifs(graph: onnx.GraphProto, opset: int) -> None:
    """Step 5 (module docstring): inline the taken branch of every If with a constant condition."""
    from onnxprune.graph.names import OnnxNames

    for _ in range(_FOLD_DEPTH):  # an If may feed the condition of another
        inputs_declared = {value.name for value in graph.input}
        initializers = {init.name: init for init in graph.initializer if init.name not in inputs_declared}
        producers = {out: node for node in graph.node for out in node.output if out}
        names = OnnxNames.of_proto(graph)
        keep, folded = [], 0
        for node in graph.node:
            taken = None
            if node.op_type == "If" and node.domain in ("", "ai.onnx"):
                cond = _constant_value(node.input[0], initializers, producers, opset, _FOLD_DEPTH)
                if cond is not None and cond.size == 1:
                    attrs = {a.name: a.g for a in node.attribute}
                    taken = attrs.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
            inlined = None if taken is None else _inline_branch(node, taken, names)
            if inlined is None:
                keep.append(node)
                continue
            nodes, inits = inlined
            keep.extend(nodes)
            graph.initializer.extend(inits)
            folded += 1
            _LOG.info("normalize: If %r has a constant condition; folded to its %s", node.name,
                      "then branch" if taken is attrs.get("then_branch") else "else branch")
        if not folded:
            return
        del graph.node[:]
        graph.node.extend(keep)
        drop_dead_nodes(graph)  # the nodes that only computed a folded condition


def _constant_value(name: str, initializers, producers, opset: int, depth: int) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or computed (within ``depth`` nodes) from
    initializers only, by the ONNX reference evaluator; None otherwise."""
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if depth <= 0 or node is None:
        return None
    values = {}
    for source in dict.fromkeys(i for i in node.input if i):
        value = _constant_value(source, initializers, producers, opset, depth - 1)
        if value is None:
            return None
        values[source] = value
    results = evaluate_node(node, values, opset)
    if results is None:  # not constant for us: the If stays
        return None
    outputs = [o for o in node.output if o]
    return results[outputs.index(name)]



def _inline_branch(node: onnx.NodeProto, branch: onnx.GraphProto, names) -> tuple[list, list] | None:
    """The branch's nodes and initializers renamed for the outer graph: every value it defines
    gets a fresh name, its i-th output becomes the If's i-th output. None when the branch
    holds a subgraph (its inner reads would need renaming too) or its outputs do not match."""
    if len(branch.output) != len(node.output) or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in branch.node for a in n.attribute):
        return None
    rename: dict[str, str] = {}
    for init in branch.initializer:
        rename[init.name] = names.fresh(f"{node.name or 'if'}/{init.name}")
    for inner in branch.node:
        for out in inner.output:
            if out:
                rename[out] = names.fresh(f"{node.name or 'if'}/{out}")
    targets = dict(zip((o.name for o in branch.output), node.output, strict=True))
    identities = []
    for source, target in targets.items():
        if not target:
            continue
        produced = any(source in inner.output for inner in branch.node)
        if produced and list(targets).count(source) == 1:
            rename[source] = target  # the node computing it writes the If's output directly
        else:  # passed through from outside, an initializer, or one value for two outputs
            identities.append(helper.make_node("Identity", [rename.get(source, source)], [target],
                                               name=names.fresh(f"{node.name or 'if'}/{target}")))
    nodes = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.name = names.fresh(f"{node.name or 'if'}/{inner.name or inner.op_type}")
        for index, value in enumerate(copy.input):
            copy.input[index] = rename.get(value, value)
        for index, value in enumerate(copy.output):
            copy.output[index] = rename.get(value, value)
        nodes.append(copy)
    inits = []
    for init in branch.initializer:
        copy = TensorProto()
        copy.CopyFrom(init)
        copy.name = rename[init.name]
        inits.append(copy)
    return nodes + identities, inits


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name read by a node (subgraphs included) or exposed as a graph output."""
    used = {value.name for value in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _used_names(sub)
    return used


def _used_names_of(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> set[str]:
    """``_used_names`` of ``graph`` were its nodes ``nodes``."""
    used = {value.name for value in graph.output}
    for node in nodes:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _used_names(sub)
    return used


def drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove the nodes none of whose outputs is read (by a node, a subgraph or the graph
    outputs), their value_info, and the initializers then unread."""
    nodes = list(graph.node)
    while True:
        used = _used_names_of(nodes, graph)
        alive = [n for n in nodes if any(o in used for o in n.output if o)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    if len(nodes) != len(graph.node):
        produced = {o for n in nodes for o in n.output}
        stale = {o for n in graph.node for o in n.output} - produced
        keep_info = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(keep_info)
        del graph.node[:]
        graph.node.extend(nodes)
    _drop_unused_initializers(graph)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph) | {value.name for value in graph.input}
    keep = [init for init in graph.initializer if init.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _split_shared_float_initializers(graph: onnx.GraphProto) -> None:
    """Give every op its own copy of a multi-element float initializer it shares with other ops."""
    candidates = {
        init.name: init
        for init in graph.initializer
        if init.data_type in _FLOAT_TYPES and int(np.prod(init.dims)) > 1
    }
    graph_input_names = {value.name for value in graph.input}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(node.input):  # an op reading W twice is still one op
            if name in candidates and name not in graph_input_names:
                consumers[name].append(node)
    names = OnnxNames.of_proto(graph)
    for name, nodes in consumers.items():
        for node in nodes[1:]:
            new_name = names.fresh(name, sep="__")
            copy = TensorProto()
            copy.CopyFrom(candidates[name])
            copy.name = new_name
            graph.initializer.append(copy)
            for index, value in enumerate(node.input):
                if value == name:
                    node.input[index] = new_name


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference (non-strict, with data propagation). For a large model (over 64 MiB of
    weights; over 2 GiB it could not even be serialized for inference) its weightless header (large float initializers with their
    dims but no data; the int shape tensors data propagation reads are small and kept) is
    inferred instead and the shapes found are copied into ``model``, which is not copied."""
    from onnxprune.graph.modelio import is_large_model, weightless_header

    large = is_large_model(model)
    source = weightless_header(model, _large_float) if large else model
    try:
        inferred = shape_inference.infer_shapes(source, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        _LOG.warning("normalize: shape inference skipped (%s)", str(exc).splitlines()[0])
        return model
    if not large:
        return inferred
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for given, found in zip(model.graph.output, inferred.graph.output, strict=True):
        given.CopyFrom(found)
    return model


def _large_float(tensor: TensorProto) -> bool:
    from onnxprune.graph.sessions import tensor_nbytes

    return tensor.data_type in _FLOAT_TYPES and tensor.HasField("raw_data") and tensor_nbytes(tensor) >= 1024
