"""Keep LayerNormalization exact over a pruned hidden size: pad its input back to the full width.

With r of the D channels of a transformer's residual stream removed, the masked model's
LayerNormalization still normalizes over D, the removed channels being zeros:

    mean = S / D,   var = Q / D - mean^2        (S, Q: sums of x and x^2 over the kept channels)

A LayerNormalization over the kept D' = D - r channels would divide by D' instead. So each one
listed in ``GroupAnalysis.padded_norms`` becomes

    x' [.., D'] -> Pad(x', 0 .. r zeros at the end of the last axis) -> LayerNormalization(scale
    and bias padded with r zeros) -> Slice(.., 0:D')

which computes the masked statistics exactly (the order of the channels does not matter to a
mean). The Pad and Slice copy a [.., D] tensor each; the MatMuls that read and write the stream
are the ones that get narrower.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxprune.graph.names import OnnxNames


class PadNormsPass(ir.passes.InPlacePass):
    """``removed[group]``: the channels a plan removes; pads every listed LayerNormalization."""

    def __init__(self, analysis, removed: dict[str, list[int]]) -> None:
        super().__init__()
        self.analysis, self.removed = analysis, removed

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = {node.name: node for node in graph}
        names = OnnxNames.of_ir(graph)
        modified = False
        for site in self.analysis.padded_norms:
            r = sum(sum(p.start <= c < p.stop for c in self.removed.get(p.group, ())) for p in site.pieces)
            if r:
                _pad(graph, nodes[site.node], site.rank, r, names)
                modified = True
        return ir.passes.PassResult(model, modified=modified)


def _pad(graph: ir.Graph, node: ir.Node, rank: int, r: int, names: OnnxNames) -> None:
    x = node.inputs[0]
    dtype = node.inputs[1].const_value.numpy().dtype
    kept = node.inputs[1].const_value.numpy().shape[-1]
    pads = np.zeros(2 * rank, np.int64)
    pads[-1] = r
    pad = ir.Node("", "Pad", [x, _const(graph, names, f"{node.name}_pads", pads),
                              _const(graph, names, f"{node.name}_pad_value", np.zeros((), dtype))],
                  name=names.fresh(f"{node.name}_pad"))
    pad.outputs[0].name = names.fresh(f"{x.name}_padded")
    pad.outputs[0].type = x.type
    graph.insert_before(node, pad)
    node.replace_input_with(0, pad.outputs[0])
    for index in (1, 2):  # scale and bias: the padded channels' values do not reach the output
        if len(node.inputs) > index and node.inputs[index] is not None:
            param = node.inputs[index]
            array = np.concatenate([param.const_value.numpy(), np.zeros(r, dtype)])
            node.replace_input_with(index, _const(graph, names, f"{param.name}_padded", array))
    out = node.outputs[0]
    axes = _const(graph, names, f"{node.name}_slice_axes", np.array([-1], np.int64))
    starts = _const(graph, names, f"{node.name}_slice_starts", np.array([0], np.int64))
    ends = _const(graph, names, f"{node.name}_slice_ends", np.array([kept], np.int64))
    cut = ir.Node("", "Slice", [out, starts, ends, axes], name=names.fresh(f"{node.name}_slice"))
    graph.insert_after(node, cut)
    for use in list(out.uses()):
        if use.node is not cut:
            use.node.replace_input_with(use.idx, cut.outputs[0])
    cut.outputs[0].type = out.type
    if out.is_graph_output():  # the graph output keeps its name
        index = list(graph.outputs).index(out)
        name = out.name
        out.name, cut.outputs[0].name = names.fresh(f"{name}_padded"), name
        graph.outputs[index] = cut.outputs[0]
    else:
        cut.outputs[0].name = names.fresh(f"{out.name}_kept")


def _const(graph: ir.Graph, names: OnnxNames, base: str, array: np.ndarray) -> ir.Value:
    name = names.fresh(base)
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value
