"""Conv and ConvTranspose (ONNX Conv-1/11, ConvTranspose-1/11).

    Conv:           Y[n, o] = B[o] + sum_{c, k} W[o, c, k] * X[n, c, . + k]       W: [C_out, C_in/group, k...]
    ConvTranspose:  W: [C_in, C_out/group, k...]

Plain (group=1): W's axis 0 (ConvTranspose: 1) and B open the output channels; W's axis 1
(ConvTranspose: 0) reads the input channels. Depthwise (group = C_in = C_out): output channel c
is input channel c filtered, so the output carries the input's channels; W and B follow them and
the ``group`` attribute counts them. Other grouped convs read input run j (of C_in/group channels)
in conv group j: their input channels are frozen; their output channels are pruned with equally
many kept in each of the ``group`` runs, so C_out stays a multiple of ``group``.
"""

from __future__ import annotations

from onnxprune.passes.rules.core import TensorAxis, register


def _no_padding(ctx) -> bool:
    pads = ctx.attr("pads") or []
    return ctx.attr("auto_pad", "NOTSET") in ("NOTSET", "VALID") and not any(pads)


@register("Conv", 1)
def conv(node, ctx) -> None:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    layout = ctx.layout(x)
    if not ctx.is_param(w) or (b is not None and not ctx.is_param(b)):
        ctx.freeze(f"Conv {node.name!r} has a computed weight", layout)
        return
    c_out, c_in_group = w.const_value.shape[0], w.const_value.shape[1]
    if layout is not None and (layout.axis != 1 or layout.block != 1):
        ctx.freeze(f"Conv {node.name!r} reads channels on axis {layout.axis}", layout)
        layout = None
    group = ctx.attr("group", 1)
    bias = TensorAxis(b.name, 0, 0, c_out) if b is not None else None
    if group == 1:
        if layout is not None:
            ctx.consume(layout, w.name, 1, 0, _no_padding(ctx), x)
        ctx.produce(node.outputs[0], 1, TensorAxis(w.name, 0, 0, c_out), bias)
    elif layout is not None and c_in_group == 1 and group == c_out == layout.channels and layout.block == 1:
        weights = ctx.follow(layout, w.name, 0)
        biases = ctx.follow(layout, b.name, 0) if b is not None else [None] * len(weights)
        ctx.int_edit(layout, 0, layout.channels, 1, -1, 0, attribute="group")
        ctx.tie(layout)
        # zeroing a channel's filter and bias zeroes it whatever comes in: a reset point
        ctx.set_layout(node.outputs[0], layout.reset([(wt,) if bt is None else (wt, bt) for wt, bt in zip(weights, biases)]))
    else:  # grouped: filters of conv group j read input run j, so the input stays whole
        ctx.freeze(f"grouped Conv {node.name!r} (group={group}) reads its input channels in blocks", layout)
        out = ctx.produce(node.outputs[0], 1, TensorAxis(w.name, 0, 0, c_out), bias)
        ctx.chunked(out, group)  # C_out must stay a multiple of group: equal counts per conv group


@register("ConvTranspose", 1)
def conv_transpose(node, ctx) -> None:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    layout = ctx.layout(x)
    if not ctx.is_param(w) or (b is not None and not ctx.is_param(b)) or ctx.attr("group", 1) != 1:
        ctx.freeze(f"ConvTranspose {node.name!r} is grouped or has a computed weight", layout)
        return
    c_out = w.const_value.shape[1]
    if layout is not None and (layout.axis != 1 or layout.block != 1):
        ctx.freeze(f"ConvTranspose {node.name!r} reads channels on axis {layout.axis}", layout)
        layout = None
    if layout is not None:  # a constant input spreads unevenly at the borders: never foldable
        ctx.consume(layout, w.name, 0, 1, False, x)
    bias = TensorAxis(b.name, 0, 0, c_out) if b is not None else None
    ctx.produce(node.outputs[0], 1, TensorAxis(w.name, 1, 0, c_out), bias)


__all__ = ["conv", "conv_transpose"]
