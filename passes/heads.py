"""Attention heads: which projections attention reads head by head, so their unit is a head.

Multi-head attention splits a projection's N output columns into H heads of d columns
(``[B, T, N] -> [B, T, H, d] -> [B, H, T, d]``) and multiplies two activations per head:

    S = Q_h K_h^T / sqrt(d)      (a MatMul whose batch axes hold the heads)
    O_h = softmax(S) V_h         (the same), then O -> [B, T, H*d] -> the output projection

Removing one of the d columns of a head changes that head's dot products, so only whole heads
can go. This module finds, before the channel walk, each projection whose output reaches an
activation x activation MatMul through layout ops (Reshape, Transpose, Squeeze, Unsqueeze, a
scale, a bias Add), and the head dimension d there; the projection then opens H units of d
columns (``TensorAxis.block = d``) instead of N channels, and the ordinary rules carry the
heads through the reshapes to the MatMuls (:mod:`onnxprune.passes.rules.attention`).

A packed projection (``nn.MultiheadAttention``'s in_proj: Q, K and V in one [D, 3D] weight)
reaches the MatMuls through a ``Gather`` (or ``Split``) that picks chunk i of k: it is cut into k
chunks of heads (like a Split of a Conv's channels, :func:`groups.channel_cuts`).

Finding a projection here only makes its unit coarser; whether the heads are prunable (and
what their removal rewrites) is decided by the rules, which freeze anything they cannot prove.
"""

from __future__ import annotations

import math

import onnx_ir as ir

_LAYOUT = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout"}
_PRODUCERS = {"MatMul", "Gemm"}


def head_units(graph: ir.Graph, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Producer output name -> (head dim d, element offsets where chunks start) for every
    projection that attention reads per head."""
    found: dict[str, tuple[int, set[int]]] = {}
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if a is None or b is None or a.const_value is not None or b.const_value is not None:
            continue
        sa, sb = shapes.get(a.name), shapes.get(b.name)
        if sa is None or sb is None or len(sa) < 3 or len(sb) < 3:
            continue
        left, right = _trace(a, shapes), _trace(b, shapes)
        # QK^T contracts over d (both sides are projections); AV has d as its output columns
        d = sa[-1] if left is not None else sb[-1]
        for traced in (left, right):
            if traced is None or d <= 1:
                continue
            value, chunk = traced
            columns = shapes.get(value.name, (0,))[-1]
            size = columns // chunk[1] if chunk else columns
            if columns % (chunk[1] if chunk else 1) or size % d:
                continue  # not whole heads (one head left is still a unit: a pruned model analyzed again)
            offsets = {size * i for i in range(1, chunk[1])} if chunk else set()
            known = found.setdefault(value.name, (d, set()))
            if known[0] != d:
                found[value.name] = (0, set())  # two head sizes: leave it to the rules (frozen)
                continue
            known[1].update(offsets)
    return {name: (d, tuple(sorted(offsets))) for name, (d, offsets) in found.items() if d > 0}


def _trace(value: ir.Value, shapes: dict[str, tuple[int, ...]]) -> tuple[ir.Value, tuple[int, int] | None] | None:
    """(projection output, (chunk index, chunk count) or None) that ``value`` is a view of."""
    chunk = None
    for _ in range(32):
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in _PRODUCERS:
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
                return None
            return value, chunk
        if node.op_type in _LAYOUT:
            value = node.inputs[0]
        elif node.op_type in ("Mul", "Div", "Add", "Sub"):
            value = _activation_side(node, shapes)
        elif node.op_type == "Gather" and chunk is None:
            index = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
            data = shapes.get(node.inputs[0].name)
            axis = node.attributes.get("axis")
            axis = 0 if axis is None else axis.value
            if index is None or index.numpy().size != 1 or data is None:
                return None
            count = data[axis]
            chunk = (int(index.numpy().reshape(-1)[0]) % count, count)
            value = node.inputs[0]
        elif node.op_type == "Split" and chunk is None:
            chunk = (next(i for i, out in enumerate(node.outputs) if out is value), len(node.outputs))
            value = node.inputs[0]
        else:
            return None
        if value is None:
            return None
    return None


def _activation_side(node: ir.Node, shapes: dict[str, tuple[int, ...]]) -> ir.Value | None:
    """The input of a scale or bias op that has the output's shape (the other is broadcast)."""
    out = shapes.get(node.outputs[0].name)
    sides = [v for v in node.inputs if v is not None and shapes.get(v.name) == out]
    if len(sides) == 1:
        return sides[0]
    consts = [v for v in node.inputs if v is not None and v.const_value is not None]
    rest = [v for v in node.inputs if v is not None and v.const_value is None]
    if len(rest) == 1 and consts and math.prod(shapes.get(rest[0].name, (0,))) == math.prod(out or (1,)):
        return rest[0]
    return None
