"""Tiny transformer encoders for the attention tests and benchmarks, written like their models.

``TinyBert`` follows HuggingFace's ``BertModel`` (eager attention): word + position + token-type
embeddings and a LayerNorm, post-LN layers ``LN(x + Attn(x))`` and ``LN(h + FFN(h))`` with
``view(B, T, H, d).permute(0, 2, 1, 3)``, ``Q K^T / sqrt(d)`` plus the additive mask
``(1 - mask) * -10000``, and a classifier on the first token (so the hidden size reaches a head
that can be pruned; a sentence encoder whose output is the hidden state keeps its width).
``sdpa=True`` uses ``scaled_dot_product_attention`` instead (what newer HuggingFace versions
export). ``tiny_vit`` is torchvision's VisionTransformer (``nn.MultiheadAttention``, packed
in_proj, pre-LN) at 32x32.
"""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import torch
from torch import nn

VOCAB, SEQ = 50, 8


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, sdpa: bool) -> None:
        super().__init__()
        self.heads, self.d, self.sdpa = heads, hidden // heads, sdpa
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.size()[:-1], self.heads, self.d).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        if self.sdpa:
            context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d) + mask
            context = torch.matmul(scores.softmax(-1), v)
        context = context.permute(0, 2, 1, 3).contiguous()
        context = context.view(*context.size()[:-2], self.heads * self.d)
        return self.norm(x + self.dense(context))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, sdpa: bool) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, sdpa)
        self.intermediate, self.output = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attention(x, mask)
        return self.norm(h + self.output(nn.functional.gelu(self.intermediate(h))))


class TinyBert(nn.Module):
    def __init__(self, hidden: int = 16, heads: int = 2, layers: int = 2, ffn: int = 32, classes: int = 3,
                 sdpa: bool = False) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, hidden)
        self.position = nn.Embedding(64, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(_Layer(hidden, heads, ffn, sdpa) for _ in range(layers))
        self.classifier = nn.Linear(hidden, classes)
        self.register_buffer("position_ids", torch.arange(64)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.norm(self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids)))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return self.classifier(x[:, 0])


def tiny_bert(seed: int = 0, **kwargs) -> TinyBert:
    """A seeded TinyBert with LayerNorm scales and biases made distinct (an export shares equal
    initializers, and a unit scale would hide an error in which parameter follows which channel)."""
    torch.manual_seed(seed)
    model = TinyBert(**kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, nn.Linear):
                module.bias.normal_(0.0, 0.1)
    return model.eval()


def token_feeds(batch: int = 1, seq: int = SEQ, seed: int = 0) -> dict[str, np.ndarray]:
    """input_ids in the vocabulary and an attention mask with the last two tokens padded."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[:, -2:] = 0
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64), "attention_mask": mask}


def export_bert(model: nn.Module, dynamo: bool, seq: int = SEQ) -> onnx.ModelProto:
    feeds = token_feeds(1, seq)
    args = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    names = ["input_ids", "attention_mask"]
    if dynamo:
        return torch.onnx.export(model, args, input_names=names, dynamo=True, verbose=False).model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, args, buffer, input_names=names, output_names=["logits"], dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def tiny_vit(seed: int = 0) -> nn.Module:
    """torchvision's VisionTransformer at 32x32 (2 layers, 2 heads, width 32), LayerNorms and
    biases made distinct, the zero-initialized head given N(0, 0.02) weights."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        for name, param in model.named_parameters():
            if name.endswith("bias") or "in_proj_bias" in name:
                param.normal_(0.0, 0.1)
            elif not param.any():
                param.normal_(0.0, 0.02)
    return model.eval()
