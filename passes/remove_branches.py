"""Remove residual layers: ``y = Add(x, f(x))`` with ``f`` dropped becomes ``y = x``.

In the masked reference the branch's gate tensors are zero, so ``f(x) = 0`` and ``y = x``
exactly; the Add's readers read ``x`` and the branch's nodes and weights become unused (the
cleanup pass deletes them). A branch whose output is a constant ``k`` (all its units removed,
a BatchNormalization shift left over) becomes ``Add(x, k)`` with ``k`` of shape [1, C, 1, ...].
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxprune.graph.names import OnnxNames

log = logging.getLogger(__name__)


class RemoveBranchesPass(ir.passes.InPlacePass):
    """Drop ``dropped`` branches; replace ``constant[branch_id]`` branches by their constant."""

    def __init__(self, analysis, dropped: tuple[str, ...], constant: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.analysis, self.dropped, self.constant = analysis, dropped, constant

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = {node.name: node for node in graph}
        fresh = OnnxNames.of_ir(graph).fresh  # every new tensor or node name comes from here
        # input positions first: dropping one branch renames the values the next one reads
        where = {}
        for branch_id in (*self.dropped, *self.constant):
            branch = self.analysis.branch(branch_id)
            add = nodes[branch.add_node]
            names = [v.name for v in add.inputs]
            where[branch_id] = (add, names.index(branch.skip_value), names.index(branch.branch_output))
        for branch_id in self.dropped:
            add, skip_index, _ = where[branch_id]
            skip = add.inputs[skip_index]
            out = add.outputs[0]
            for use in list(out.uses()):
                use.node.replace_input_with(use.idx, skip)
            if out.is_graph_output():  # keep the output's name: the Add becomes an Identity
                name, node_name = out.name, add.name
                out.name, add.name = fresh(f"{name}_dropped"), fresh(f"{add.name}_dropped")
                identity = ir.Node("", "Identity", [skip], name=node_name, outputs=[ir.Value(name=name)])
                graph.insert_after(add, identity)
                identity.outputs[0].type, identity.outputs[0].shape = out.type, out.shape
                graph.outputs[list(graph.outputs).index(out)] = identity.outputs[0]
        for branch_id, value in self.constant.items():
            branch = self.analysis.branch(branch_id)
            add, _, index = where[branch_id]
            name = fresh(f"{branch.branch_output}_constant")
            const = ir.Value(name=name, const_value=ir.Tensor(value, name=name), shape=ir.Shape(value.shape),
                             type=ir.TensorType(ir.DataType.from_numpy(value.dtype)))
            graph.register_initializer(const)
            add.replace_input_with(index, const)
        log.info("removed %d residual branches, %d made constant", len(self.dropped), len(self.constant))
        return ir.passes.PassResult(model, modified=bool(self.dropped or self.constant))
