"""Shared by test_lc.py and test_ltp.py: a digits MLP trained in torch and the real training loop.

The methods are exercised through ``onnxprune.training.loop.train`` exactly as the pipeline does,
on a LeNet-300-100-shaped tanh MLP (64-300-100-10) trained on scikit-learn's digits; no ONNX is
needed for weight granularity, which keeps these tests fast.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch

from onnxprune.calibration.losses import TaskLoss
from onnxprune.methods._support.projections import global_topk_mask
from onnxprune.methods.base import PruningMethod
from onnxprune.training.loop import TrainConfig, TrainData, train


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16).reshape(-1, 64)
    y = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return torch.tensor(x[tr]), torch.tensor(y[tr]), torch.tensor(x[te]), torch.tensor(y[te])


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    torch.manual_seed(0)
    model = make_mlp()
    x, y, _, _ = digits()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return copy.deepcopy(model.state_dict())


def make_mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.Tanh(), torch.nn.Linear(300, 100),
                               torch.nn.Tanh(), torch.nn.Linear(100, 10))


def trained_mlp() -> torch.nn.Sequential:
    model = make_mlp()
    model.load_state_dict(_trained_state())
    return model


def accuracy(model: torch.nn.Module) -> float:
    _, _, xt, yt = digits()
    model.eval()
    with torch.no_grad():
        return float((model(xt).argmax(1) == yt).float().mean())


def fit(method: PruningMethod, model: torch.nn.Module, epochs: int, lr: float = 3e-3, weight_decay: float = 0.0):
    """Train ``model`` under ``method`` with the shared loop (kd+ce distillation from itself)."""
    x, y, _, _ = digits()
    with torch.no_grad():
        teacher = model(x)
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    ctx = train(method, model, weights, TrainData([x], [teacher], y), TaskLoss(["logits"], "kd+ce", True),
                TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, quiet=True),
                evaluate=lambda: {"accuracy": accuracy(model)})
    plan = method.finalize(ctx)
    return ctx, plan


class OneShotMagnitude(PruningMethod):
    """The one-shot baseline: global magnitude mask at step 0, then fine-tuning with it fixed."""

    name = "one-shot-test"

    def __init__(self, sparsity: float) -> None:
        super().__init__()
        self.sparsity = sparsity

    def setup(self, ctx) -> None:
        total = sum(w.numel() for w in ctx.weights.values())
        self.masks = global_topk_mask(dict(ctx.weights), round((1 - self.sparsity) * total))
        self.after_step(ctx)

    def after_step(self, ctx) -> None:
        with torch.no_grad():
            for name, w in ctx.weights.items():
                w.mul_(self.masks[name])

    def finalize(self, ctx):
        return None


def density(model: torch.nn.Module) -> float:
    ws = [p for n, p in model.named_parameters() if n.endswith("weight")]
    return sum(int(w.count_nonzero()) for w in ws) / sum(w.numel() for w in ws)
