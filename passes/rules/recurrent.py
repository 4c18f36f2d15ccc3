"""LSTM, GRU and RNN (ONNX LSTM-7/14, GRU-7/14, RNN-7/14): frozen, with the reason.

A hidden unit of a recurrent op is a row of every gate block of W, R and B and a column of R
(it feeds back into all gates at the next step); removing one is structured pruning of the
recurrence itself, which no rule here proves exact. The op opens no channels (its outputs carry
no group), and the channels it reads are frozen: its input weight W reads them inside every gate.
"""

from __future__ import annotations

from onnxprune.passes.rules.core import register


@register("LSTM", 7)
@register("GRU", 7)
@register("RNN", 7)
def recurrent(node, ctx) -> None:
    gates = {"LSTM": 4, "GRU": 3}.get(node.op_type, 1)
    rows = f"a row of all {gates} gates" if gates > 1 else "a row of W"
    layouts = [ctx.layout(value) for value in node.inputs]
    ctx.freeze(f"{node.op_type} {node.name!r}: recurrent hidden units (each {rows} and a column "
               f"of the recurrence R) and the features it reads are not pruned", *layouts)
