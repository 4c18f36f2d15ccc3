"""A BERT encoder with sentence-transformers' mean pooling and L2 normalization, in plain torch.

It computes what ``transformers.BertModel`` (eager attention) followed by sentence-transformers'
``Pooling(mean)`` and ``Normalize`` compute, from the same state dict (the names of
``BertModel``'s parameters), with the classic additive attention mask

    scores = Q K^T / sqrt(d) + (1 - mask) * finfo(float32).min,   softmax over keys

instead of transformers 5's mask helpers, whose export (GreaterOrEqual, GatherND, ``And`` of
masks) adds ops to the ONNX graph that have nothing to do with the encoder. ``build_minilm`` checks
the outputs against ``transformers.BertModel`` when transformers is installed.

    pooled = sum_t h_t m_t / max(sum_t m_t, 1e-9),    embedding = pooled / max(|pooled|_2, 1e-12)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        # Python ints, as in BertSelfAttention: a width read from x.shape would be exported as
        # Shape/Gather arithmetic, and the Reshape targets into and out of the heads would be
        # computed instead of constant in their last dims
        self.heads, self.head_size = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.ffn_in, self.ffn_out = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        split = lambda y: y.view(*y.size()[:-1], self.heads, self.head_size).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + bias
        context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
        context = context.view(*context.size()[:-2], self.heads * self.head_size)
        x = self.attn_norm(x + self.attn_out(context))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class SentenceBert(nn.Module):
    """(input_ids, attention_mask, token_type_ids) int64 [B, T] -> L2-normalized embedding [B, H]."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
                 positions: int = 512, types: int = 2, eps: float = 1e-12) -> None:
        super().__init__()
        self.word, self.position = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
        self.token_type, self.embed_norm = nn.Embedding(types, hidden), nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, intermediate, eps) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)[None]
        x = self.embed_norm(x)
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        weights = mask.unsqueeze(-1)
        pooled = (x * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def load_bert_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``transformers.BertModel`` parameter names (``bert.`` prefix optional, pooler ignored)."""
        rename = {"embeddings.word_embeddings": "word", "embeddings.position_embeddings": "position",
                  "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "embed_norm"}
        per_layer = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
                     "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
                     "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm"}
        ours = {}
        for name, value in state.items():
            name = name.removeprefix("bert.")
            if name.startswith("pooler.") or name.endswith("position_ids"):
                continue
            module, _, leaf = name.rpartition(".")
            if module in rename:
                ours[f"{rename[module]}.{leaf}"] = value
            elif module.startswith("encoder.layer."):
                index, _, inner = module.removeprefix("encoder.layer.").partition(".")
                ours[f"layers.{index}.{per_layer[inner]}.{leaf}"] = value
            else:
                raise KeyError(f"unexpected BERT parameter {name!r}")
        self.load_state_dict(ours, strict=True)


def max_difference_to_transformers(model: SentenceBert, folder, feeds: dict[str, torch.Tensor]) -> float:
    """max |ours - transformers.BertModel (eager) + mean pooling + normalize| on ``feeds``."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(folder / "config.json"))
    config._attn_implementation = "eager"
    reference = BertModel(config, add_pooling_layer=False).eval()
    state = {k.removeprefix("bert."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler.")}, strict=False)
    with torch.no_grad():
        hidden = reference(**feeds).last_hidden_state
        weights = feeds["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        expected = F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=1)
        return float((model(**feeds) - expected).abs().max())
