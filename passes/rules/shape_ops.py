"""Ops that only move data: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Shape.

Flatten/Reshape may merge the channel axis with the axes after it: channel c then owns a
contiguous block of ``block`` features (``[N, C, H, W] -> [N, C*H*W]``: block H*W), which is how a
Gemm/MatMul after a Flatten reads whole channels. A Reshape target that spells the channel
dimension is rewritten; other reshapes (splitting channels into heads) freeze the channels.
"""

from __future__ import annotations

import math

from onnxprune.passes.rules.core import register


def _reshaped(ctx, layout, in_shape, out_shape):
    """(axis, block) of the channels in the output, or None when they do not stay whole."""
    if in_shape is None or out_shape is None:
        return None
    before = math.prod(in_shape[: layout.axis])
    inner = layout.block * math.prod(in_shape[layout.axis + 1:])  # elements per channel
    for axis in range(len(out_shape)):  # batch-1 shapes: several axes may have the same prefix
        if math.prod(out_shape[:axis]) != before:
            continue
        trailing = math.prod(out_shape[axis + 1:])
        if trailing and inner % trailing == 0 and out_shape[axis] == layout.channels * (inner // trailing):
            return axis, inner // trailing
    return None


@register("Flatten", 1)
def flatten(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    placed = _reshaped(ctx, layout, ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0]))
    if placed is None:
        ctx.freeze(f"Flatten {node.name!r} interleaves the channels", layout)
        return
    ctx.set_layout(node.outputs[0], layout.moved(placed[0], 2, placed[1]))


@register("Reshape", 5)
def reshape(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    target = ctx.const(node.inputs[1])
    out_shape = ctx.shape(node.outputs[0])
    placed = _reshaped(ctx, layout, ctx.shape(node.inputs[0]), out_shape)
    if target is None or placed is None:
        ctx.freeze(f"Reshape {node.name!r} has a computed target or splits the channels", layout)
        return
    axis, block = placed
    if int(target[axis]) > 0:  # an explicit size counts channels; -1 and 0 adjust by themselves
        ctx.int_edit(layout, 0, layout.channels, block, 1, axis)
    elif int(target[axis]) == 0 and ctx.shape(node.inputs[0])[axis] != out_shape[axis]:
        ctx.freeze(f"Reshape {node.name!r} copies a dimension that is not the channels'", layout)
        return
    ctx.set_layout(node.outputs[0], layout.moved(axis, len(out_shape), block))


@register("Transpose", 1)
def transpose(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    perm = ctx.attr("perm") or list(reversed(range(layout.rank)))
    if layout.block != 1:
        ctx.freeze(f"Transpose {node.name!r} moves flattened channels", layout)
        return
    ctx.set_layout(node.outputs[0], layout.moved(list(perm).index(layout.axis), layout.rank))


@register("Squeeze", 13)
@register("Unsqueeze", 13)
def squeeze(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    in_shape, out_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    placed = _reshaped(ctx, layout, in_shape, out_shape)
    if placed is None or placed[1] != layout.block:
        ctx.freeze(f"{node.op_type} {node.name!r} moves the channels", layout)
        return
    ctx.set_layout(node.outputs[0], layout.moved(placed[0], len(out_shape)))


@register("Shape", 1)
def shape(node, ctx) -> None:
    # only reads sizes; anything computed from them meets rules that need constants
    ctx.layout(node.inputs[0])
