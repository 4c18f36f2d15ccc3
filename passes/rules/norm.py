"""Normalizations (ONNX BatchNormalization-9/14/15, InstanceNormalization-6, LayerNormalization-17).

    BatchNormalization:    Y[:, c] = scale[c] * (X[:, c] - mean[c]) / sqrt(var[c] + eps) + B[c]
    InstanceNormalization: Y[n, c] = scale[c] * (X[n, c] - mu[n, c]) / sqrt(s2[n, c] + eps) + B[c]

Both act on each channel alone: every parameter follows the channel, and zeroing scale and B
zeroes the channel whatever came in, so they become the channel's gate tensors.
LayerNormalization normalizes over the last axes; when the channels are among them, removing
one changes the mean and variance of the others, so those channels are frozen, unless the
analysis option ``hidden_size`` asks for a transformer's residual stream: then scale and bias
follow the channels (zeroing them zeroes the channel, as for BatchNormalization) and the group
is marked approximate. With r of D channels removed, the masked model normalizes

    y_i = g_i (x_i - S/D) / sqrt(Q/D - (S/D)^2 + eps) + b_i      (S, Q: sums of x, x^2 over kept i)

while the pruned one divides by D - r: a shift of the mean that depends on the input, which no
constant can undo. So by default (``hidden_norm="pad"``) the pruned LayerNormalization gets its
input padded back to D with zeros and its output sliced to the kept channels, which gives the
masked statistics exactly; ``hidden_norm="narrow"`` leaves it narrow and marks the group
approximate (docs/transformers.md measures the error).
"""

from __future__ import annotations

import dataclasses

from onnxprune.passes.rules.core import GateTree, State, register


def _per_channel(node, ctx, params: tuple[int, ...], gates: tuple[int, ...]) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    if layout.axis != 1 or layout.block != 1 or len(node.outputs) > 1:
        ctx.freeze(f"{node.op_type} {node.name!r} normalizes another axis or is in training mode", layout)
        return
    if not all(ctx.is_param(node.inputs[i]) for i in params):
        ctx.freeze(f"{node.op_type} {node.name!r} has computed parameters", layout)
        return
    sliced = {i: ctx.follow(layout, node.inputs[i].name, 0) for i in params}
    ctx.set_layout(node.outputs[0], layout.reset([tuple(sliced[i][k] for i in gates) for k in range(len(layout.segments))]))


@register("BatchNormalization", 9)
def batch_norm(node, ctx) -> None:
    _per_channel(node, ctx, params=(1, 2, 3, 4), gates=(1, 2))


@register("InstanceNormalization", 6)
def instance_norm(node, ctx) -> None:
    _per_channel(node, ctx, params=(1, 2), gates=(1, 2))


@register("LayerNormalization", 17)
def layer_norm(node, ctx) -> None:
    layout = ctx.layout(node.inputs[0])
    if layout is None:
        return
    axis = ctx.attr("axis", -1)
    axis = axis + layout.rank if axis < 0 else axis
    if layout.axis >= axis and _hidden(node, ctx, layout, axis):
        return
    if layout.axis >= axis:
        ctx.freeze(f"LayerNormalization {node.name!r} normalizes over the channels (removing one "
                   f"changes the statistics of the rest)", layout)
        return
    # channels outside the normalized axes pass through; a zero row comes out as the shift B
    ctx.set_layout(node.outputs[0], layout.with_state(lambda s: State.VARYING))


def _hidden(node, ctx, layout, axis: int) -> bool:
    """The residual stream through a LayerNormalization over its last axis (option hidden_size)."""
    params = [v for v in node.inputs[1:3] if v is not None]
    if (not ctx.option("hidden_size") or axis != layout.rank - 1 or layout.block != 1
            or not all(ctx.is_param(v) for v in params)
            or any(o.uses() or o.is_graph_output() for o in node.outputs[1:])):
        return False
    narrow = ctx.option("hidden_norm") == "narrow"
    if not narrow and any(s.gate != State.ZERO for s in layout.segments):
        ctx.freeze(f"LayerNormalization {node.name!r} reads a removed channel as a nonzero value", layout)
        return True
    sliced = [ctx.follow(layout, v.name, 0) for v in params]
    if narrow:
        ctx.approximate(f"LayerNormalization {node.name!r} normalizes over a pruned width", layout)
        ctx.set_layout(node.outputs[0], layout.reset([tuple(s[k] for s in sliced) for k in range(len(layout.segments))]))
        return True
    ctx.pad_norm(layout)  # exact: zeros stand in for the removed channels in mean and variance
    # the statistics read the input: its gates stay (the removed channels must be zeros there)
    segments = tuple(dataclasses.replace(seg, gates=GateTree(tuple(s[k] for s in sliced), (seg.gates,)))
                     for k, seg in enumerate(layout.segments))
    ctx.set_layout(node.outputs[0], dataclasses.replace(layout, segments=segments))
    return True
