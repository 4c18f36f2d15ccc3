"""Residual branches: ``y = Add(x, f(x))`` where ``f``'s nodes are used by nothing else.

Dropping the branch rewrites ``y`` to ``x`` exactly when ``f(x) = 0``, which the masked reference
gets by zeroing the branch output's gate tensors (its last BatchNormalization's scale and
shift, or its last layer's weight and bias). The branch is the nodes on paths from ``x`` to
``f(x)``; what they read besides ``x`` (a transformer's attention mask, shape arithmetic) comes
from outside and stays. This finds ``x + Attn(LN(x))`` and ``x + FFN(LN(x))`` (pre-LN) and
BERT's post-LN ``LN(x + Attn(x))`` alike. The search from each Add walks back from one input
and never past the skip value's producer, so it visits each node a bounded number of times in
chains of blocks.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxprune.passes.structures import Piece, ResidualBranch, State


def _branch_nodes(out: ir.Value, skip: ir.Value, add: ir.Node, order: dict[int, int]) -> list[ir.Node] | None:
    """The nodes on paths from ``skip`` to ``out``, if nothing outside uses them; values they read
    that do not depend on ``skip`` (an attention mask, shape arithmetic) are inputs from outside."""
    start = out.producer()
    skip_producer = skip.producer()
    floor = order[id(skip_producer)] if skip_producer is not None else -1
    if start is None or order.get(id(start), -1) <= floor:
        return None
    seen: dict[int, ir.Node] = {}
    stack = [start]
    while stack:  # candidates: everything `out` reads back to the skip's producer
        node = stack.pop()
        if id(node) in seen or order.get(id(node), -1) <= floor:
            continue
        seen[id(node)] = node
        for value in node.inputs:
            if value is not None and value is not skip and value.producer() is not None:
                stack.append(value.producer())
    depends: dict[int, bool] = {}
    for node in sorted(seen.values(), key=lambda n: order[id(n)]):  # inputs before their users
        depends[id(node)] = any(value is skip or (value is not None and value.producer() is not None
                                                  and depends.get(id(value.producer()), False))
                                for value in node.inputs)
    if not depends[id(start)]:
        return None
    members = {key: node for key, node in seen.items() if depends[key]}
    for node in members.values():
        for value in node.outputs:
            if value.is_graph_output():
                return None
            for use in value.uses():
                if id(use.node) not in members and not (value is out and use.node is add):
                    return None
    return sorted(members.values(), key=lambda n: order[id(n)])


def find_residual_branches(graph: ir.Graph, builder) -> list[ResidualBranch]:
    """Every ``Add(skip, branch)`` whose branch output can be zeroed by gate tensors."""
    order = {id(node): index for index, node in enumerate(graph)}
    branches = []
    for add in graph:
        if add.op_type != "Add" or len(add.inputs) != 2:
            continue
        a, b = add.inputs
        if a is None or b is None or a.const_value is not None or b.const_value is not None or a is b:
            continue
        for skip, out in ((a, b), (b, a)):
            nodes = _branch_nodes(out, skip, add, order)
            layout = builder.layouts.get(out.name)
            if nodes is None or layout is None or any(s.gate != State.ZERO for s in layout.segments):
                continue
            if builder.shapes.get(skip.name) != builder.shapes.get(add.outputs[0].name):
                continue  # the skip would be broadcast: dropping the branch changes the shape
            seen: set[int] = set()
            gates = tuple(dict.fromkeys(g for s in layout.segments for g in s.gates.flatten(seen)))
            pieces = tuple(Piece(str(s.space), 0, s.size, layout.block) for s in layout.segments)
            branches.append(ResidualBranch(add.name, add.name, skip.name, out.name,
                                           tuple(n.name for n in nodes), gates, 0, layout.axis, pieces))
            break
    return branches
