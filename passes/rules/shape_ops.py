"""Ops that only move data: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Shape.

Flatten/Reshape may merge the channel axis with the axes after it: channel c then owns a
contiguous block of ``block`` features (``[N, C, H, W] -> [N, C*H*W]``: block H*W), which is how a
Gemm/MatMul after a Flatten reads whole channels. A Reshape target that spells the channel
dimension is rewritten, also when the target is computed by a Concat of constant and
computed parts (a dynamic batch); the entry that counts channels must be a constant there.
Splitting a projection's columns into heads works because the projection's unit is then a head
(block d, :mod:`onnxprune.passes.heads`); a packed Q/K/V projection split into a stacked axis is
followed by :func:`onnxprune.passes.rules.attention.unpack`. Other splits freeze the channels.
"""

from __future__ import annotations

import math

from onnxprune.passes.rules.core import register


def target_entry(ctx, target, entry: int) -> tuple[str | None, int, int, int] | None:
    """Where entry ``entry`` of a Reshape target lives: (Concat node name or None for the
    Reshape's own input 1, input index, entry there, its value), or None when it is computed."""
    const = ctx.const(target)
    if const is not None:
        return None, 1, entry, int(const.reshape(-1)[entry])
    producer = target.producer() if target is not None else None
    if producer is None or producer.op_type != "Concat" or producer.domain not in ("", "ai.onnx"):
        return None
    offset = 0
    for index, part in enumerate(producer.inputs):
        length = (ctx.shape(part) or (None,))[0] if part is not None else None
        if length is None:
            return None
        if offset <= entry < offset + length:
            value = ctx.const(part)
            if value is None:
                return None
            return producer.name, index, entry - offset, int(value.reshape(-1)[entry - offset])
        offset += length
    return None


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
    out_shape, in_shape = ctx.shape(node.outputs[0]), ctx.shape(node.inputs[0])
    placed = _reshaped(ctx, layout, in_shape, out_shape)

    def edit(part, axis: int, block: int) -> bool:
        source = target_entry(ctx, node.inputs[1], axis)
        if source is None:
            return False
        owner, index, entry, value = source
        if value > 0:  # an explicit size counts channels; -1 and 0 adjust by themselves
            ctx.int_edit(part, 0, part.channels, block, index, entry, node=owner)
        return value != 0 or in_shape[axis] == out_shape[axis]  # 0 copies the input's dimension

    if placed is None and in_shape is not None and out_shape is not None:
        from onnxprune.passes.rules.attention import unpack

        if unpack(node, ctx, layout, in_shape, out_shape, edit):
            return
    if placed is None or not edit(layout, *placed):
        ctx.freeze(f"Reshape {node.name!r} has a computed target or splits the channels", layout)
        return
    axis, block = placed
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
