"""Elementwise ops: unary activations, per-channel constants, and two activations combined.

Unary ops act on each element alone, so the output carries the input's channels. Those with
f(0) = 0 (Relu, LeakyRelu, PRelu, Tanh, Erf, Gelu, HardSwish, Clip around 0, ...) keep a zeroed
channel zero; Sigmoid, HardSigmoid, Exp and Softplus turn it into a nonzero constant.

Add/Sub/Mul/Div with a constant: a per-channel constant (its channel axis as long as the
channels) follows the channels, and an added one joins the gates (zeroing it keeps the channel
zero); a constant broadcast over the channels turns a zero channel into a constant when added.
Add/Sub/Mul of two activations ties their channels (residual Add, squeeze-excite's
``x * gate[N, C, 1, 1]``, Silu's ``x * Sigmoid(x)``); a product is zero when either side is.
"""

from __future__ import annotations

import numpy as np

from onnxprune.passes.rules.core import State, nonzero, pass_through, register

_ZERO_PRESERVING = {
    "Relu": 6, "LeakyRelu": 6, "Tanh": 6, "Erf": 9, "Gelu": 20, "HardSwish": 14, "Elu": 6, "Selu": 6,
    "Softsign": 1, "Neg": 6, "Abs": 6, "Identity": 1, "Dropout": 1, "Cast": 6, "Celu": 12, "Mish": 18,
    "Sin": 7, "Sqrt": 6, "ThresholdedRelu": 10,
}
_NONZERO_AT_ZERO = {"Sigmoid": 6, "HardSigmoid": 6, "Exp": 6, "Softplus": 1, "Cos": 7}


def _unary(node, ctx) -> None:
    if len([o for o in node.outputs if o.uses() or o.is_graph_output()]) > 1:  # Dropout's mask
        ctx.freeze(f"{node.op_type} {node.name!r} has a second output in use", ctx.layout(node.inputs[0]))
        return
    pass_through(node, ctx, nonzero if node.op_type in _NONZERO_AT_ZERO else None)


for _op, _since in {**_ZERO_PRESERVING, **_NONZERO_AT_ZERO}.items():
    register(_op, _since)(_unary)


@register("Clip", 6)
def clip(node, ctx) -> None:
    low = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    high = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    low = ctx.attr("min", None) if low is None and ctx.opset < 11 else low
    high = ctx.attr("max", None) if high is None and ctx.opset < 11 else high
    keeps_zero = (low is None or float(low) <= 0.0) and (high is None or float(high) >= 0.0)
    pass_through(node, ctx, None if keeps_zero else nonzero)


@register("PRelu", 9)
def prelu(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    slope = node.inputs[1]
    if layout is None:
        return
    per_channel = _channel_extent(layout, slope)
    if per_channel is None:
        ctx.freeze(f"PRelu {node.name!r} has a computed or oddly shaped slope", layout)
        return
    if per_channel >= 0:
        ctx.follow(layout, slope.name, per_channel)
    ctx.set_layout(node.outputs[0], layout)


def _channel_extent(layout, const_value) -> int | None:
    """Axis of a constant that spans the channels (-1: broadcast over them; None: neither)."""
    if const_value is None or const_value.const_value is None:
        return None
    shape = tuple(const_value.const_value.shape)
    axis = layout.axis - (layout.rank - len(shape))
    if axis < 0 or shape[axis] == 1:
        return -1
    return axis if shape[axis] == layout.channels * layout.block else None


@register("Add", 7)
@register("Sub", 7)
@register("Mul", 7)
@register("Div", 7)
def binary(node, ctx) -> None:
    a, b = node.inputs
    la, lb = ctx.layout(a), ctx.layout(b)
    op = node.op_type
    if la is not None and lb is not None:
        if op == "Div":
            ctx.freeze(f"Div {node.name!r} divides by an activation", la, lb)
            return
        ctx.set_layout(node.outputs[0], ctx.merge(la, lb, multiply=op == "Mul"))
        return
    layout, other = (la, b) if la is not None else (lb, a)
    if layout is None:
        return
    if op == "Div" and other is a:
        ctx.freeze(f"Div {node.name!r} divides by the channels", layout)
        return
    if not ctx.is_param(other):
        _broadcast_activation(node, ctx, layout, other)
        return
    axis = _channel_extent(layout, other)
    if axis is None:
        ctx.freeze(f"{op} {node.name!r} has a constant that does not line up with the channels", layout)
        return
    shape = tuple(other.const_value.shape)
    varies = any(d > 1 for i, d in enumerate(shape) if i != axis)
    additive = op in ("Add", "Sub")
    if axis >= 0:
        sliced = ctx.follow(layout, other.name, axis)
        if additive:
            layout = layout.add_gates(sliced)
    elif additive and np.any(ctx.const(other) != 0):
        layout = layout.with_state(nonzero)
    if additive and varies:
        layout = layout.with_state(lambda s: State.VARYING if s != State.ZERO or axis < 0 else s)
    ctx.set_layout(node.outputs[0], layout)


def _broadcast_activation(node, ctx, layout, other) -> None:
    """An activation without channel data: fine if it is broadcast over the channels."""
    shape = ctx.shape(other)
    rank = len(shape) if shape is not None else 0
    axis = layout.axis - (layout.rank - rank)
    if shape is None or (axis >= 0 and shape[axis] != 1):
        ctx.freeze(f"{node.op_type} {node.name!r} combines the channels with an activation of unknown channels", layout)
        return
    if node.op_type == "Mul":
        state = lambda s: s if s == State.ZERO else State.VARYING  # noqa: E731
    else:
        state = lambda s: State.VARYING  # noqa: E731
    ctx.set_layout(node.outputs[0], layout.with_state(state))
