"""LSTM-7/14, GRU-7/14 and RNN-7/14 (forward, reverse, bidirectional; optional bias and initial
states).

The ONNX equations, step by step over the sequence (gate order in W, R, B: LSTM i, o, f, c;
GRU z, r, h; RNN one block; B holds the input biases Wb, then the recurrent biases Rb):

    LSTM   i = s(X Wi' + H Ri' + Wbi + Rbi)      f = s(X Wf' + H Rf' + Wbf + Rbf)
           c = tanh(X Wc' + H Rc' + Wbc + Rbc)   C = f * C + i * c
           o = s(X Wo' + H Ro' + Wbo + Rbo)      H = o * tanh(C)
    GRU    z = s(X Wz' + H Rz' + Wbz + Rbz)      r = s(X Wr' + H Rr' + Wbr + Rbr)
           h = tanh(X Wh' + (r * H) Rh' + Rbh + Wbh)          linear_before_reset = 0
           h = tanh(X Wh' + r * (H Rh' + Rbh) + Wbh)          linear_before_reset = 1
           H = (1 - z) * h + z * H
    RNN    H = tanh(X Wi' + H Ri' + Wbi + Rbi)

Outputs Y [seq, num_directions, batch, hidden] (``layout=1``: [batch, seq, num_directions,
hidden]), Y_h and (LSTM) Y_c [num_directions, batch, hidden] (``layout=1``: batch first). A
reverse direction reads the sequence from its end and writes Y at the original positions.
W, R and B are read from the initializer container, so they train like any other weight.
Refused, with the reason: ``sequence_lens`` (sequences of different lengths), peepholes ``P``,
activations other than the defaults, ``clip``, LSTM ``input_forget=1``.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from onnxprune.importing.converters._common import refuse

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


class Recurrent(torch.nn.Module):
    """One ONNX LSTM, GRU or RNN node: ``forward(X, W, R, B, initial_h, initial_c)``."""

    def __init__(self, op: str, hidden: int, direction: str, layout: int, linear_before_reset: int,
                 outputs: int) -> None:
        super().__init__()
        self.op, self.hidden, self.direction, self.layout = op, hidden, direction, layout
        self.linear_before_reset, self.outputs = linear_before_reset, outputs

    def forward(self, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None = None,
                initial_h: torch.Tensor | None = None, initial_c: torch.Tensor | None = None):
        if self.layout == 1:  # batch first: [batch, seq, input] -> [seq, batch, input]
            x = x.transpose(0, 1)
            initial_h = None if initial_h is None else initial_h.transpose(0, 1)
            initial_c = None if initial_c is None else initial_c.transpose(0, 1)
        seq, batch = x.shape[0], x.shape[1]
        directions = w.shape[0]
        gates = GATES[self.op]
        ys, hs, cs = [], [], []
        for d in range(directions):
            reverse = self.direction == "reverse" or (self.direction == "bidirectional" and d == 1)
            wb, rb = (b[d, : gates * self.hidden], b[d, gates * self.hidden:]) if b is not None else (None, None)
            h = initial_h[d] if initial_h is not None else x.new_zeros(batch, self.hidden)
            c = initial_c[d] if initial_c is not None else x.new_zeros(batch, self.hidden)
            projected = torch.matmul(x, w[d].t())  # [seq, batch, gates * hidden]
            if wb is not None:
                projected = projected + wb
            steps = [None] * seq
            for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                if self.op == "LSTM":
                    h, c = self._lstm(projected[t], h, c, r[d], rb)
                elif self.op == "GRU":
                    h = self._gru(projected[t], h, r[d], rb)
                else:
                    h = self._rnn(projected[t], h, r[d], rb)
                steps[t] = h
            ys.append(torch.stack(steps, 0))  # [seq, batch, hidden]
            hs.append(h)
            cs.append(c)
        y = torch.stack(ys, 1)  # [seq, num_directions, batch, hidden]
        y_h, y_c = torch.stack(hs, 0), torch.stack(cs, 0)
        if self.layout == 1:
            y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
        results = (y, y_h, y_c)[: self.outputs]
        return results[0] if self.outputs == 1 else results

    def _lstm(self, xw, h, c, r, rb):
        z = xw + torch.matmul(h, r.t())
        if rb is not None:
            z = z + rb
        i, o, f, g = torch.split(z, self.hidden, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _rnn(self, xw, h, r, rb):
        z = xw + torch.matmul(h, r.t())
        return torch.tanh(z if rb is None else z + rb)

    def _gru(self, xw, h, r, rb):
        n = self.hidden
        xz, xr, xh = torch.split(xw, n, dim=-1)
        rz, rr, rh = torch.split(r, n, dim=0)
        bz, br, bh = torch.split(rb, n) if rb is not None else (0.0, 0.0, 0.0)
        z = torch.sigmoid(xz + torch.matmul(h, rz.t()) + bz)
        reset = torch.sigmoid(xr + torch.matmul(h, rr.t()) + br)
        if self.linear_before_reset:
            candidate = torch.tanh(xh + reset * (torch.matmul(h, rh.t()) + bh))
        else:
            candidate = torch.tanh(xh + torch.matmul(reset * h, rh.t()) + bh)
        return (1 - z) * candidate + z * h


def _convert(node: OnnxNode, version: int) -> OperationConverterResult:
    op = node.operation_type
    attrs = node.attributes
    inputs = list(node.input_values) + [""] * (8 - len(node.input_values))
    if inputs[4]:
        raise refuse(node, version, "sequence_lens is not supported (sequences of different lengths)")
    if op == "LSTM" and inputs[7]:
        raise refuse(node, version, "peephole weights P are not supported")
    direction = attrs.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    expected = _DEFAULT_ACTIVATIONS[op] * (2 if direction == "bidirectional" else 1)
    if activations and [a.lower() for a in activations] != [a.lower() for a in expected]:
        raise refuse(node, version, f"activations {activations} (only the defaults {expected} are supported)")
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        raise refuse(node, version, "activation_alpha/beta are not supported")
    if attrs.get("clip") is not None:
        raise refuse(node, version, "clip is not supported")
    if attrs.get("input_forget", 0):
        raise refuse(node, version, "input_forget=1 is not supported")
    hidden = attrs.get("hidden_size")
    if hidden is None:
        raise refuse(node, version, "hidden_size is required")
    outputs = list(node.output_values)
    while outputs and not outputs[-1]:
        outputs.pop()
    module = Recurrent(op, int(hidden), direction, int(attrs.get("layout", 0)),
                       int(attrs.get("linear_before_reset", 0)), len(outputs))
    used = [inputs[0], inputs[1], inputs[2], inputs[3], inputs[5], inputs[6] if op == "LSTM" else ""]
    while used and not used[-1]:
        used.pop()
    return OperationConverterResult(module, OnnxMapping(inputs=tuple(used), outputs=tuple(outputs)))


for _op in ("LSTM", "GRU", "RNN"):
    for _version in (7, 14):
        add_converter(operation_type=_op, version=_version)(
            lambda node, graph, _v=_version: _convert(node, _v))
