"""A tiny sentence encoder for the token-calibration tests: tests.support.encoders' TinyBert body
(HuggingFace BertModel's layout) with sentence-transformers' head, mean pooling over the mask and
optionally L2 normalization, three token inputs, exported with dynamic batch and sequence axes."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.encoders import VOCAB, tiny_bert

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class SentenceEncoder(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> mean-pooled (L2-normalized) [B, hidden]."""

    def __init__(self, normalize: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.bert = tiny_bert(seed)
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, token_type_ids):
        bert = self.bert
        positions = bert.position_ids[:, : input_ids.shape[1]]
        x = bert.norm(bert.word(input_ids) + bert.position(positions) + bert.token_type(token_type_ids))
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask[:, None, None, :]) * -10000.0
        for layer in bert.layers:
            x = layer(x, bias)
        weights = mask.unsqueeze(-1)
        pooled = (x * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


def export_sentence_encoder(module: nn.Module, dynamo: bool = False) -> onnx.ModelProto:
    """Opset 18; axes 0 (batch) and 1 (sequence) of every input dynamic."""
    example = (torch.randint(0, VOCAB, (2, 8)), torch.ones(2, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
            program = torch.onnx.export(module.eval(), example, input_names=list(INPUTS), output_names=["sentence"],
                                        opset_version=18, dynamo=True, verbose=False,
                                        dynamic_shapes={n: {0: batch, 1: seq} for n in INPUTS})
            return program.model_proto
        torch.onnx.export(module.eval(), example, buffer, input_names=list(INPUTS), output_names=["sentence"],
                          opset_version=18, dynamo=False,
                          dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in INPUTS}, "sentence": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())
