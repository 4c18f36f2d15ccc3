"""Attention: products of two activations per head, Softmax, Gather, and packed Q/K/V projections.

Heads arrive as channels on a batch axis of ``[B, H, T, d]`` (one unit = one head, see
:mod:`onnxprune.passes.heads`). A MatMul contracts its last two axes and maps batch axes
one to one, so head h of the output depends only on head h of both inputs:

    S_h = Q_h @ K_h^T          the output carries the heads; MACs scale with the kept heads
    O_h = softmax(S_h) @ V_h   zero when V_h is zero, whatever softmax(S_h) is

So a head's gate tensors are those of V (its columns and bias): zeroing them makes O_h = 0
in the masked reference, and O_h then scales linearly with a soft gate. Q_h and K_h are not
gated (a score of a removed head is left live, state VARYING, and must meet a zeroed factor
before anything reads it); they are removed with the head all the same. The 1/sqrt(d) scale
does not change: heads keep their d.

Softmax over the last axis maps a zeroed row to 1/T: the heads pass through it, VARYING.
Gather on another axis than the channels' (ViT's class token ``x[:, 0]``) passes them
through; a Gather from a constant 2-D table (an embedding) opens the table's columns as
channels, like a MatMul's weight.

A packed projection ``[.., 3*D] -> [.., 3, ...]`` followed by Unsqueeze/Transpose/Squeeze and
``Gather(i)`` on the stacked axis (``nn.MultiheadAttention``'s in_proj) is followed here:
chunk i reaches the i-th Gather's output; the three chunks are tied (the reshape holds one
D for all three).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxprune.passes.rules.core import GateTree, Layout, State, TensorAxis, axis_of, pass_through, register


def activation_matmul(node, ctx, la: Layout | None, lb: Layout | None) -> None:
    """MatMul of two activations: channels on a batch axis pass to the output."""
    out_shape = ctx.shape(node.outputs[0])
    known = [lay for lay in (la, lb) if lay is not None]
    if out_shape is None or any(lay.axis >= lay.rank - 2 or lay.block != 1 for lay in known):
        ctx.freeze(f"MatMul {node.name!r} multiplies two activations over their channels", la, lb)
        return
    rank = len(out_shape)
    first = known[0]
    axis = rank - (first.rank - first.axis)
    if la is not None and lb is not None:
        if la.rank - la.axis != lb.rank - lb.axis:
            ctx.freeze(f"MatMul {node.name!r} has its inputs' channels on different axes", la, lb)
            return
        if la.with_state(lambda s: State.ZERO) == la and lb.with_state(lambda s: State.ZERO) == lb:
            # Q K^T: leave both live (gates on V only); a removed head's scores are not zero
            merged = ctx.merge(la, lb, multiply=True, gate=False)
            if merged is None:
                return
            segs = tuple(dataclasses.replace(s, gate=State.VARYING, gates=GateTree()) for s in merged.segments)
            merged = dataclasses.replace(merged, segments=segs)
        else:
            merged = ctx.merge(la, lb, multiply=True)
        if merged is None:
            return
    else:
        other = node.inputs[1] if la is not None else node.inputs[0]
        shape = ctx.shape(other)
        at = len(shape) - (first.rank - first.axis) if shape is not None else -1
        if shape is None or (at >= 0 and shape[at] != 1):
            ctx.freeze(f"MatMul {node.name!r} multiplies the channels with an activation of unknown channels", first)
            return
        merged = first.with_state(lambda s: s if s == State.ZERO else State.VARYING)
    merged = merged.moved(axis, rank)
    ctx.scales(merged)
    ctx.set_layout(node.outputs[0], merged)


@register("Softmax", 13)
@register("LogSoftmax", 13)
def softmax(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    if axis_of(layout, ctx.attr("axis", -1)) == layout.axis:
        ctx.freeze(f"{node.op_type} {node.name!r} normalizes over the channels", layout)
        return
    pass_through(node, ctx, lambda s: State.VARYING)


@register("Softmax", 1)
@register("LogSoftmax", 1)
def softmax_coerced(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    if layout.axis >= axis_of(layout, ctx.attr("axis", 1)):  # opset < 13 flattens the axes from `axis` on
        ctx.freeze(f"{node.op_type} {node.name!r} normalizes over the channels", layout)
        return
    pass_through(node, ctx, lambda s: State.VARYING)


@register("Gather", 1)
def gather(node, ctx) -> None:
    data, indices = node.inputs[0], node.inputs[1]
    layout, index_layout = ctx.layout(data), ctx.layout(indices)
    out_shape = ctx.shape(node.outputs[0])
    axis = ctx.attr("axis", 0)
    if index_layout is not None:
        ctx.freeze(f"Gather {node.name!r} indexes with channel data", index_layout, layout)
        return
    if layout is None:
        table = ctx.const(data) if ctx.is_param(data) else None
        if table is not None and table.ndim == 2 and table.dtype.kind == "f" and axis in (0, -2) and out_shape:
            ctx.produce(node.outputs[0], len(out_shape) - 1, TensorAxis(data.name, 1, 0, table.shape[1]), None)
        return
    axis = axis_of(layout, axis)
    index_shape = ctx.shape(indices)
    if axis == layout.axis or index_shape is None or out_shape is None:
        ctx.freeze(f"Gather {node.name!r} gathers along the channels", layout)
        return
    moved = layout.axis if layout.axis < axis else layout.axis - 1 + len(index_shape)
    ctx.set_layout(node.outputs[0], layout.moved(moved, len(out_shape)))


def unpack(node, ctx, layout: Layout, in_shape, out_shape, edit) -> bool:
    """A Reshape ``[.., k*C] -> [.., k, ...]`` of k equal chunks of a packed projection, followed
    to the Gathers that take each chunk back out; False when the pattern does not hold."""
    from onnxprune.passes.rules.shape_ops import _reshaped

    axis = layout.axis
    if axis != len(in_shape) - 1 or len(out_shape) <= len(in_shape) or tuple(out_shape[:axis]) != tuple(in_shape[:axis]):
        return False
    k = out_shape[axis]
    if k < 2 or layout.channels % k:
        return False
    size = layout.channels // k
    subs = [layout.sub(i * size, (i + 1) * size) for i in range(k)]
    if any(sub is None for sub in subs):
        return False
    placed = _reshaped(ctx, subs[0], (*in_shape[:axis], size * layout.block), (*out_shape[:axis], *out_shape[axis + 1:]))
    if placed is None:
        return False
    chan, block = placed[0] + 1, placed[1]  # the stacked axis sits before it
    ends = _follow_stack(node.outputs[0], axis, chan, len(out_shape), ctx)
    if ends is None or sorted(i for _, i, _, _ in ends) != list(range(k)):
        return False
    if not edit(subs[0], chan, block):
        return False
    for sub in subs[1:]:
        ctx.merge(subs[0], sub, multiply=False, gate=False)  # one D in the reshape for all chunks
    for out, index, at, rank in ends:
        ctx.set_layout(out, Layout(at, rank, block, subs[index].segments))
    return True


def _follow_stack(value, stack: int, chan: int, rank: int, ctx):
    """[(Gather output, chunk index, channel axis, rank)] reached through Unsqueeze, Transpose and
    Squeeze from a value whose axis ``stack`` indexes the chunks, or None."""
    for _ in range(8):
        if value.is_graph_output():
            return None
        users = [use.node for use in value.uses() if use.node.op_type != "Shape"]
        if users and all(n.op_type == "Gather" for n in users):
            ends = []
            for n in users:
                index = ctx.const(n.inputs[1])
                axis = n.attributes.get("axis")
                axis = 0 if axis is None else axis.value
                if index is None or index.size != 1 or (axis + rank if axis < 0 else axis) != stack:
                    return None
                i = int(np.asarray(index).reshape(-1)[0])
                ends.append((n.outputs[0], i % ctx.shape(value)[stack], chan - (chan > stack), rank - 1))
            return ends
        if len(users) != 1:
            return None
        n = users[0]
        axes = ctx.const(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] is not None else None
        if n.op_type == "Transpose":
            perm = list(ctx_attr(n, "perm"))
            stack, chan = perm.index(stack), perm.index(chan)
        elif n.op_type == "Unsqueeze" and axes is not None:
            rank += axes.size
            inserted = sorted(int(a) + rank if a < 0 else int(a) for a in axes.reshape(-1))
            rest = [p for p in range(rank) if p not in inserted]
            stack, chan = rest[stack], rest[chan]
        elif n.op_type == "Squeeze" and axes is not None:
            removed = sorted(int(a) + rank if a < 0 else int(a) for a in axes.reshape(-1))
            if stack in removed or chan in removed:
                return None
            stack -= sum(r < stack for r in removed)
            chan -= sum(r < chan for r in removed)
            rank -= len(removed)
        else:
            return None
        value = n.outputs[0]
    return None


def ctx_attr(node, name):
    attribute = node.attributes.get(name)
    return None if attribute is None else attribute.value
