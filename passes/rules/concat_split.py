"""Concat, Split and Slice (ONNX Concat-4, Split-13/18, Slice-13).

On the channel axis, Concat lines its inputs' channel runs up at offsets, and Split/Slice take
runs back out when their cut points fall between runs; the split sizes and slice bounds count
channels and are rewritten. Cuts inside a run of one producer's channels freeze those channels.
Along other axes the channels pass through unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxprune.passes.rules.core import Layout, Segment, State, register


@register("Concat", 4)
def concat(node, ctx) -> None:
    layouts = [ctx.layout(v) for v in node.inputs]
    known = [lay for lay in layouts if lay is not None]
    if not known:
        return
    axis = ctx.attr("axis")
    first = known[0]
    axis = axis + first.rank if axis < 0 else axis
    if axis != first.axis:
        merged = first
        for other in known[1:]:
            merged = ctx.merge(merged, other, multiply=False) if merged is not None else None
        tokens = [_token(ctx, v, first) for v, lay in zip(node.inputs, layouts) if lay is None]
        if None in tokens or merged is None:
            ctx.freeze(f"Concat {node.name!r} joins channels with a value of unknown channels", *known)
            return
        for name, at in tokens:  # a constant joined along positions (ViT's class token) is a gate
            merged = merged.add_gates(ctx.follow(merged, name, at))
        ctx.set_layout(node.outputs[0], merged)
        return
    if len(known) != len(layouts) or any(lay.axis != axis or lay.block != first.block for lay in known):
        ctx.freeze(f"Concat {node.name!r} joins channels with a value of unknown channels", *known)
        return
    segments = tuple(s for lay in known for s in lay.segments)
    ctx.set_layout(node.outputs[0], dataclasses.replace(first, segments=segments))


def _token(ctx, value, layout) -> tuple[str, int] | None:
    """(initializer, its channel axis) of a constant, or a constant Expanded over other axes."""
    if value is not None and not ctx.is_param(value) and value.producer() is not None \
            and value.producer().op_type == "Expand":
        value = value.producer().inputs[0]
    if value is None or not ctx.is_param(value):
        return None
    shape = tuple(value.const_value.shape)
    at = layout.axis - (layout.rank - len(shape))
    return (value.name, at) if at >= 0 and shape[at] == layout.channels * layout.block else None


def _split_sizes(node, ctx, total: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = ctx.const(node.inputs[1])
        return None if sizes is None else [int(s) for s in sizes]
    if ctx.attr("split") is not None:
        return list(ctx.attr("split"))
    parts = ctx.attr("num_outputs", len(node.outputs))
    step = -(-total // parts)
    return [min(step, total - i * step) for i in range(parts)]


@register("Split", 13)
def split(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    axis = ctx.attr("axis", 0)
    axis = axis + layout.rank if axis < 0 else axis
    if axis != layout.axis:
        for out in node.outputs:
            ctx.set_layout(out, layout)
        return
    sizes = _split_sizes(node, ctx, layout.channels * layout.block)
    if sizes is None or any(s % layout.block for s in sizes) or len(node.inputs) < 2 or node.inputs[1] is None:
        ctx.freeze(f"Split {node.name!r} has no constant split sizes to rewrite", layout)
        return
    start = 0
    parts = []
    for size in sizes:
        part = layout.sub(start, start + size // layout.block)
        if part is None:
            ctx.freeze(f"Split {node.name!r} cuts inside one producer's channels", layout)
            return
        parts.append((start, part))
        start += size // layout.block
    for index, ((begin, part), out) in enumerate(zip(parts, node.outputs)):
        ctx.int_edit(layout, begin, begin + part.channels, layout.block, 1, index)
        ctx.set_layout(out, part)


@register("Slice", 13)
def slice_(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    starts, ends = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    axes = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = ctx.const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
        ctx.freeze(f"Slice {node.name!r} has computed bounds", layout)
        return
    axes = np.arange(len(starts)) if axes is None else axes
    axes = [int(a) + layout.rank if a < 0 else int(a) for a in axes]
    if layout.axis not in axes:
        ctx.set_layout(node.outputs[0], layout)
        return
    i = axes.index(layout.axis)
    total = layout.channels * layout.block
    start, end = int(starts[i]), int(ends[i])
    if (steps is not None and int(steps[i]) != 1) or start < 0 or end < 0 or start % layout.block or (
            min(end, total) % layout.block):
        ctx.freeze(f"Slice {node.name!r} takes channels with a step or from the end", layout)
        return
    first, last = start // layout.block, min(end, total) // layout.block
    part = layout.sub(first, last)
    if part is None:
        ctx.freeze(f"Slice {node.name!r} cuts inside one producer's channels", layout)
        return
    if first > 0:
        ctx.int_edit(layout, 0, first, layout.block, 1, i)
    if end < total:
        ctx.int_edit(layout, 0, last, layout.block, 2, i)
    ctx.set_layout(node.outputs[0], part)


__all__ = ["concat", "split", "slice_", "Layout", "Segment", "State"]
