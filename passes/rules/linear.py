"""Gemm and MatMul with a constant weight: hidden units of MLPs and transformer feed-forwards.

    Gemm:    Y = alpha * A @ op(B) + beta * C,  op(B) = B^T if transB  (B: [N, K] or [K, N])
    MatMul:  Y[..., n] = sum_k A[..., k] * B[k, n]                         (B: [K, N])

The weight's K axis reads the input's channels (block > 1 after a Flatten: channel c is rows
c*HW ... c*HW+HW-1); its N axis and C's entries open the output units. MatMul between two
activations (attention) carries channels on a batch axis (heads) and freezes others
(:func:`onnxprune.passes.rules.attention.activation_matmul`).
"""

from __future__ import annotations

from onnxprune.passes.rules.attention import activation_matmul
from onnxprune.passes.rules.core import State, TensorAxis, nonzero, register


@register("Gemm", 1)
def gemm(node, ctx) -> None:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    layout = ctx.layout(a)
    if not ctx.is_param(b) or (c is not None and not ctx.is_param(c)) or ctx.attr("transA", 0):
        ctx.freeze(f"Gemm {node.name!r} has transA or a computed weight", layout)
        return
    trans_b = ctx.attr("transB", 0)
    n = b.const_value.shape[0 if trans_b else 1]
    if layout is not None and layout.axis == 1:
        ctx.consume(layout, b.name, 1 if trans_b else 0, 0 if trans_b else 1, True, a)
    elif layout is not None:
        ctx.freeze(f"Gemm {node.name!r} reads channels on its batch axis", layout)
    c_shape = tuple(c.const_value.shape) if c is not None else ()
    per_unit = c is not None and len(c_shape) >= 1 and c_shape[-1] == n and all(d == 1 for d in c_shape[:-1])
    bias = TensorAxis(c.name, len(c_shape) - 1, 0, n) if per_unit else None
    out = ctx.produce(node.outputs[0], 1, TensorAxis(b.name, 0 if trans_b else 1, 0, n), bias)
    if c is not None and not per_unit and out is not None:  # a shared or 2-D bias survives zeroing
        ctx.set_layout(node.outputs[0], out.with_state(lambda s: State.VARYING if len(c_shape) == 2 else nonzero(s)))


@register("MatMul", 1)
def matmul(node, ctx) -> None:
    a, b = node.inputs
    layout_a, layout_b = ctx.layout(a), ctx.layout(b)
    weight = ctx.const(b) if ctx.is_param(b) else None
    if weight is None:
        activation_matmul(node, ctx, layout_a, layout_b)
        return
    if weight.ndim != 2 or layout_b is not None:
        ctx.freeze(f"MatMul {node.name!r} has a weight that is not a matrix", layout_a, layout_b)
        return
    if layout_a is not None and layout_a.axis == layout_a.rank - 1:
        ctx.consume(layout_a, b.name, 0, 1, True, a)
    elif layout_a is not None:
        ctx.freeze(f"MatMul {node.name!r} reads channels on a non-contracted axis", layout_a)
    rank = len(ctx.shape(node.outputs[0]) or (0, 0))
    ctx.produce(node.outputs[0], rank - 1, TensorAxis(b.name, 1, 0, weight.shape[1]), None)
