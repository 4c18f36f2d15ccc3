"""Ops over spatial axes: pooling, spatial reductions, Pad and Resize.

They mix positions within one channel, never channels, so the output carries the input's
channels (on a shifted axis when a reduction drops axes). A constant channel stays constant
unless zero padding meets it: AveragePool counting pads, Pad in constant mode.
"""

from __future__ import annotations

import numpy as np

from onnxprune.passes.rules.core import State, padded, pass_through, register


def _channel_first(node, ctx):
    layout = ctx.layout(node.inputs[0])
    if layout is not None and (layout.axis != 1 or layout.block != 1):
        ctx.freeze(f"{node.op_type} {node.name!r} pools over the channel axis", layout)
        return None
    if layout is not None and len([o for o in node.outputs if o.uses() or o.is_graph_output()]) > 1:
        ctx.freeze(f"{node.op_type} {node.name!r} has a second output in use", layout)
        return None
    return layout


@register("MaxPool", 8)
@register("GlobalAveragePool", 1)
@register("GlobalMaxPool", 1)
@register("LpPool", 11)
def pool(node, ctx) -> None:
    if _channel_first(node, ctx) is not None:  # MaxPool pads with -inf: constants stay constant
        pass_through(node, ctx)


@register("AveragePool", 7)
def average_pool(node, ctx) -> None:
    if _channel_first(node, ctx) is None:
        return
    counts_pads = ctx.attr("count_include_pad", 0) and (any(ctx.attr("pads") or []) or ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"))
    pass_through(node, ctx, padded if counts_pads else None)


@register("ReduceMean", 1)
@register("ReduceMax", 1)
@register("ReduceMin", 1)
@register("ReduceSum", 1)
def reduce(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    axes = ctx.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = ctx.const(node.inputs[1])
    if axes is None or layout.block != 1:
        ctx.freeze(f"{node.op_type} {node.name!r} reduces over all axes or computed axes", layout)
        return
    axes = sorted(int(a) + layout.rank if a < 0 else int(a) for a in np.atleast_1d(axes))
    if layout.axis in axes:
        ctx.freeze(f"{node.op_type} {node.name!r} reduces over the channels", layout)
        return
    if ctx.attr("keepdims", 1):
        ctx.set_layout(node.outputs[0], layout)
    else:
        shift = sum(a < layout.axis for a in axes)
        ctx.set_layout(node.outputs[0], layout.moved(layout.axis - shift, layout.rank - len(axes)))


@register("Pad", 13)
def pad(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    pads = ctx.const(node.inputs[1])
    axes = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if pads is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
        ctx.freeze(f"Pad {node.name!r} has computed pads", layout)
        return
    axes = list(range(layout.rank)) if axes is None else [int(a) + layout.rank if a < 0 else int(a) for a in axes]
    k = len(axes)
    if layout.axis in axes and (pads[axes.index(layout.axis)] or pads[k + axes.index(layout.axis)]):
        ctx.freeze(f"Pad {node.name!r} pads the channel axis", layout)
        return
    value = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    constant_mode = ctx.attr("mode", "constant") == "constant"
    if constant_mode and value is not None and np.any(value != 0):
        state = lambda s: State.VARYING  # noqa: E731  (a zero channel gets a nonzero border)
    else:
        state = padded if constant_mode and np.any(pads) else None
    pass_through(node, ctx, state)


@register("Resize", 13)
def resize(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    scales = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    sizes = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if layout.block != 1 or (scales is None and sizes is None) or ctx.attr("axes") is not None:
        ctx.freeze(f"Resize {node.name!r} has computed or partial scales", layout)
        return
    if scales is not None and scales.size and float(scales[layout.axis]) != 1.0:
        ctx.freeze(f"Resize {node.name!r} resizes the channel axis", layout)
        return
    if sizes is not None and sizes.size:
        if int(sizes[layout.axis]) != layout.channels:
            ctx.freeze(f"Resize {node.name!r} resizes the channel axis", layout)
            return
        ctx.int_edit(layout, 0, layout.channels, 1, 3, layout.axis)
    pass_through(node, ctx)  # interpolating a constant gives the same constant
