"""Torch models the tests and benchmarks share: torchvision nets with realistic activation scales,
and the one way both exporters are called."""

from __future__ import annotations

import io

import onnx
import torch
import torchvision


def export(model: torch.nn.Module, x: torch.Tensor, dynamo: bool, opset: int | None) -> onnx.ModelProto:
    """Export with torch.onnx.export; ``opset=None`` means the exporter's default."""
    kwargs = {} if opset is None else {"opset_version": opset}
    if dynamo:
        return torch.onnx.export(model, (x,), dynamo=True, verbose=False, **kwargs).model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, **kwargs)
    return onnx.load_from_string(buffer.getvalue())


def realistic_random_model(name: str, size: int) -> torch.nn.Module:
    """A seeded random-weight torchvision model whose outputs have a realistic scale.

    With fresh weights and BatchNorm statistics (mean 0, var 1) the activations of deep nets
    shrink layer by layer (mobilenet_v2's logits are ~1e-15, efficientnet_b0's ~1e-20), which
    makes any error comparison vacuous. So BatchNorm statistics are measured on 8 random images
    (as training would), and zero-initialized weights (ViT's head) get N(0, 0.02) values.
    """
    torch.manual_seed(0)
    return give_realistic_scale(torchvision.models.get_model(name, weights=None), size)


def give_realistic_scale(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """See :func:`realistic_random_model`; returns ``model`` in eval mode."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.02)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration batch
        if norms:
            model.train()
            model(torch.randn(8, 3, size, size))
    return model.eval()


def fit_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                   lr: float = 3e-3, batch: int = 64) -> torch.nn.Module:
    """Train ``model`` on ``(x, y)`` with Adam and cross-entropy (shuffled mini-batches from the
    global RNG); returns it in eval mode, ready to export."""
    optimizer = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x)).split(batch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()
