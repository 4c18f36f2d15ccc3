"""Prune channels and units: delete removed channels from every tensor of their group.

For each group and removed channel c, every listed tensor axis loses the elements of c
(weights, biases, normalization parameters, per-channel constants, next layers' input rows),
and every integer that counts channels (split sizes, slice bounds, Reshape targets, depthwise
``group``) is lowered by the channels removed before it. A removed channel that reaches a
consumer as a nonzero constant k (in the reference the passes must match) would have added
``k * sum(W[:, c, ...])`` to every output; that sum is added to the consumer's bias instead:

    Conv:   B[o]  += sum_{c, kernel} k_c * W[o, c, kernel]      (no padding, so k_c is everywhere)
    Gemm:   C[o]  += alpha/beta * sum_j k_j * op(B)[j, o]
    MatMul: Y = X @ W + delta                                    (a new Add)
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from onnxprune.graph.names import OnnxNames
from onnxprune.passes.structures import FoldSite, State

log = logging.getLogger(__name__)


class PruneChannelsPass(ir.passes.InPlacePass):
    """Keep ``kept[group]`` channels of each group; ``constants[value]`` feed bias folds."""

    def __init__(self, analysis, kept: dict[str, tuple[int, ...]], constants: dict[str, np.ndarray],
                 fold_all: bool = False) -> None:
        super().__init__()
        self.analysis, self.kept, self.constants, self.fold_all = analysis, kept, constants, fold_all

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        removed = self._removed()
        if not removed:
            return ir.passes.PassResult(model, modified=False)
        nodes = {node.name: node for node in graph}
        names = OnnxNames.of_ir(graph)  # every new tensor or node name comes from here
        deltas = self._bias_deltas(graph, removed)
        cuts: dict[tuple[str, int], set[int]] = defaultdict(set)
        for group_id, channels in removed.items():
            group = self.analysis.group(group_id)
            for axis in (*group.producers, *group.consumers):
                cuts[(axis.name, axis.axis)].update(axis.element_indices(channels).tolist())
        for (name, axis), indices in cuts.items():
            value = graph.initializers[name]
            array = np.delete(value.const_value.numpy(), sorted(indices), axis=axis)
            value.const_value = ir.Tensor(array, name=name)
            value.shape = ir.Shape(array.shape)
        self._edit_integers(graph, nodes, removed, names)
        for node_name, delta in deltas.items():
            _add_bias(graph, nodes[node_name], delta, cuts, names)
        log.info("pruned %d channels in %d groups", sum(map(len, removed.values())), len(removed))
        return ir.passes.PassResult(model, modified=True)

    def _removed(self) -> dict[str, list[int]]:
        out = {}
        for group_id, kept in self.kept.items():
            group = self.analysis.group(group_id)
            channels = sorted(set(range(group.size)) - set(kept))
            if channels and kept:  # an emptied group goes with its branch (see RemoveBranchesPass)
                out[group_id] = channels
        return out

    def _bias_deltas(self, graph: ir.Graph, removed: dict[str, list[int]]) -> dict[str, np.ndarray]:
        """Per consumer node: what the removed channels added to its output (original sizes)."""
        deltas: dict[str, np.ndarray] = {}
        for group_id, channels in removed.items():
            for site in self.analysis.group(group_id).folds:
                if not self.fold_all and site.gate == State.ZERO:
                    continue
                delta = _fold(graph, site, channels, self.constants[site.value])
                if delta is not None:
                    deltas[site.node] = deltas.get(site.node, 0) + delta
        return deltas

    def _edit_integers(self, graph: ir.Graph, nodes: dict[str, ir.Node], removed: dict[str, list[int]],
                       names: OnnxNames) -> None:
        by_input: dict[tuple[str, int, str], list] = defaultdict(list)
        for edit in self.analysis.int_edits:
            by_input[(edit.node, edit.input_index, edit.attribute)].append(edit)
        for (node_name, index, attribute), edits in by_input.items():
            node = nodes[node_name]
            drop = {e.entry: sum(p.block * sum(p.start <= c < p.stop for c in removed.get(p.group, ()))
                                 for p in e.pieces) for e in edits}
            if not any(drop.values()):
                continue
            if index < 0:
                node.attributes[attribute] = ir.AttrInt64(attribute, node.attributes[attribute].value - drop[0])
                continue
            array = node.inputs[index].const_value.numpy().copy()
            for entry, count in drop.items():
                array[entry] -= count
            name = names.fresh(f"{node_name}_{index}_pruned")  # unique, also in a pruned model pruned again
            value = ir.Value(name=name, const_value=ir.Tensor(array),
                             shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.INT64))
            value.const_value.name = value.name
            graph.register_initializer(value)  # a fresh constant: the old one may be shared
            node.replace_input_with(index, value)


def _fold(graph: ir.Graph, site: FoldSite, channels: list[int], value: np.ndarray) -> np.ndarray | None:
    rows = site.weight.element_indices(channels)
    first = np.moveaxis(value, site.value_axis, 0).reshape(value.shape[site.value_axis], -1)[:, 0]
    k = first[rows].astype(np.float64)
    if not np.any(k):
        return None
    weight = np.take(graph.initializers[site.weight.name].const_value.numpy(), rows, axis=site.weight.axis)
    weight = np.moveaxis(weight, (site.weight.axis, site.out_axis), (0, 1))
    return np.einsum("j,jo->o", k, weight.reshape(weight.shape[0], weight.shape[1], -1).sum(-1))


def _add_bias(graph: ir.Graph, node: ir.Node, delta: np.ndarray, cuts: dict[tuple[str, int], set[int]],
              names: OnnxNames) -> None:
    weight = node.inputs[1].name
    out_axis = {"Conv": 0, "Gemm": 0 if _attr(node, "transB", 0) else 1, "MatMul": 1}[node.op_type]
    delta = np.delete(delta, sorted(cuts.get((weight, out_axis), ())))  # the node's own outputs may be cut
    dtype = node.inputs[1].const_value.numpy().dtype
    if node.op_type == "Gemm":
        delta = delta * _attr(node, "alpha", 1.0)
    bias_index = 2
    if node.op_type == "MatMul":
        _append_add(graph, node, delta.astype(dtype), names)
        return
    if len(node.inputs) > bias_index and node.inputs[bias_index] is not None:
        bias = node.inputs[bias_index]
        beta = _attr(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
        array = bias.const_value.numpy().astype(np.float64)
        array = (array + np.broadcast_to(delta / beta, array.shape)).astype(dtype)
        bias.const_value = ir.Tensor(array, name=bias.name)
        return
    if node.op_type == "Gemm":
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    value = _initializer(graph, names.fresh(f"{node.name}_folded_bias"), delta.astype(dtype))
    node.resize_inputs(3)
    node.replace_input_with(2, value)


def _append_add(graph: ir.Graph, node: ir.Node, delta: np.ndarray, names: OnnxNames) -> None:
    out = node.outputs[0]
    bias = _initializer(graph, names.fresh(f"{node.name}_folded_bias"), delta)
    add = ir.Node("", "Add", [out, bias], name=names.fresh(f"{node.name}_folded_add"))
    graph.insert_after(node, add)
    for use in list(out.uses()):
        if use.node is not add:
            use.node.replace_input_with(use.idx, add.outputs[0])
    if out.is_graph_output():  # the graph output keeps its name and now includes the bias
        index = list(graph.outputs).index(out)
        name = out.name
        out.name, add.outputs[0].name = names.fresh(f"{name}_unfolded"), name
        add.outputs[0].type, add.outputs[0].shape = out.type, out.shape
        graph.outputs[index] = add.outputs[0]
    else:
        add.outputs[0].name = names.fresh(f"{out.name}_folded")


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def _attr(node: ir.Node, name: str, default):
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value
