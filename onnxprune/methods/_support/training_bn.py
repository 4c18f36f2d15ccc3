"""BatchNorm put back after the convolutions for the fine-tuning, and folded away at the end.

Exporters fold BatchNorm into the convolutions (``W' = W * gamma / sigma``,
``b' = (b - mu) * gamma / sigma + beta``), so a pretrained network arrives without it, and
fine-tuning after a channel cut trains plain convolutions. ``--batchnorm`` (off by default)
fine-tunes with BatchNorm instead. Measured on the real models at 25% MACs (docs/real-models.md):
with the recalibration (:mod:`recalibrate`) it adds nothing at 2,000 calibration images and costs
0.3 to 4.3 points, and 7.8 points at 256 images (noisy batch statistics); it is worth 2.65 points
on a pruned network whose statistics were not recalibrated.

For every Conv whose output is not already read by a BatchNormalization node, a
:class:`TrainingBatchNorm` is attached to its output (a forward hook) once the channel selection
is fixed. It starts as the identity on the calibration data: with the conv's current output
statistics ``mu_c, var_c`` (over batch and space, the calibration inputs),

    running_mean = mu_c,  running_var = var_c,  gamma = sqrt(var_c + eps),  beta = mu_c

so ``BN_eval(y) = (y - mu_c) / sqrt(var_c + eps) * gamma + beta = y``. In train mode it normalizes
with the batch's statistics, as the original network's BN did while it was trained; in eval mode
with the running ones. A removed channel (its conv weight row and bias are exact zeros under the
gates) is passed through unchanged, so a cut channel stays an exact zero.

:meth:`ReinsertedBatchNorm.fold` re-estimates the running statistics on the calibration inputs (cumulative average,
no gradient), then folds each BN into its conv, as the exporter did,

    s = gamma / sqrt(running_var + eps),   W <- W * s,   b <- (b - running_mean) * s + beta

(on the baked weights, after the gates are folded in) and removes the hooks. In eval mode the
folded conv computes exactly what conv + BN computed, so write-back sees plain Conv weights under
their ONNX names and the graph gains no node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_EPS = 1e-5
_MOMENTUM = 0.1
_STATISTICS_BATCH = 64  # calibration inputs per forward pass when gathering statistics


class TrainingBatchNorm(torch.nn.Module):
    """Per-channel BN on one conv's output; its mode follows the conv's ``training`` flag."""

    def __init__(self, channels: int, device: torch.device) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(channels, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(channels, device=device))
        self.register_buffer("running_mean", torch.zeros(channels, device=device))
        self.register_buffer("running_var", torch.ones(channels, device=device))
        self.register_buffer("live", torch.ones(channels, dtype=torch.bool, device=device))
        self.active = False
        self.momentum: float | None = _MOMENTUM  # None: cumulative average (re-estimation)
        self.batches = 0

    def forward(self, y: torch.Tensor, training: bool) -> torch.Tensor:
        if not self.active:
            return y
        momentum = self.momentum
        if training and momentum is None:
            self.batches += 1
            momentum = 1.0 / self.batches
        out = F.batch_norm(y, self.running_mean, self.running_var, self.weight.to(y.dtype), self.bias.to(y.dtype),
                           training=training, momentum=momentum or 0.0, eps=_EPS)
        view = [1, -1] + [1] * (y.ndim - 2)
        return torch.where(self.live.view(view), out, y)


def _conv_modules(ctx) -> dict[str, torch.nn.Module]:
    """Conv module path -> module, for the Conv nodes whose output no BatchNormalization reads,
    whose weight and bias are initializers of their own, and that have torch twins."""
    graph = ctx.imported.onnx_model.graph
    bn_inputs = {n.input[0] for n in graph.node if n.op_type == "BatchNormalization"}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    found: dict[str, torch.nn.Module] = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.output[0] in bn_inputs:
            continue
        refs = [ctx.imported.params.get(name) for name in node.input[1:3]]
        if any(r is None for r in refs) or any(uses.get(name, 0) > 1 for name in node.input[1:3]):
            continue
        if refs[0].module_path != refs[1].module_path:
            continue
        module = ctx.model.get_submodule(refs[0].module_path)
        if isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed:
            found[refs[0].module_path] = module
    return found


class ReinsertedBatchNorm:
    """The BNs of one model: created at setup (so the loop's optimizer holds their parameters),
    inactive until :meth:`start`, folded by :meth:`fold`."""

    def __init__(self, ctx) -> None:
        self.convs = _conv_modules(ctx)
        self.norms = {path: TrainingBatchNorm(m.out_channels, ctx.device) for path, m in self.convs.items()}
        self.handles = [conv.register_forward_hook(lambda m, _i, out, bn=self.norms[path]: bn(out, m.training))
                        for path, conv in self.convs.items()]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for bn in self.norms.values() for p in (bn.weight, bn.bias)]

    @torch.no_grad()
    def start(self, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> None:
        """Activate every BN as the identity on the current network's statistics of ``inputs``."""
        sums = {path: [0.0, 0.0, 0] for path in self.convs}

        def gather(path: str, out: torch.Tensor) -> None:
            y = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            acc = sums[path]
            acc[0], acc[1], acc[2] = acc[0] + y.sum(1), acc[1] + y.square().sum(1), acc[2] + y.shape[1]

        handles = [conv.register_forward_hook(lambda _m, _i, out, path=path: gather(path, out))
                   for path, conv in self.convs.items()]
        try:
            _forward_in_chunks(model, inputs, train_bn=False)
        except RuntimeError as exc:  # a model that runs only at its fixed batch: train without BN
            log.warning("batchnorm not re-inserted: %s", str(exc).splitlines()[0])
            return
        finally:
            for h in handles:
                h.remove()
        for path, bn in self.norms.items():
            total, square, count = sums[path]
            if not count:
                continue
            mean = total / count
            var = (square / count - mean.square()).clamp_min(0.0)
            weight, bias = self.convs[path].weight, self.convs[path].bias  # under the gates
            live = (weight.detach().reshape(weight.shape[0], -1).abs().sum(1) > 0) | (bias.detach() != 0)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_((var + _EPS).sqrt())
            bn.bias.copy_(mean)
            bn.live.copy_(live)
            bn.active = True
        log.info("batchnorm re-inserted after %d convolutions for the fine-tuning", len(self.norms))

    @property
    def active(self) -> bool:
        return any(bn.active for bn in self.norms.values())

    @torch.no_grad()
    def reestimate(self, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> None:
        """Running statistics as the cumulative average over ``inputs`` in train-mode BN."""
        saved = {path: (bn.running_mean.clone(), bn.running_var.clone()) for path, bn in self.norms.items()}
        for bn in self.norms.values():
            bn.momentum, bn.batches = None, 0
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        try:
            _forward_in_chunks(model, inputs, train_bn=True)
        except RuntimeError as exc:  # keep the running averages of the training steps
            log.warning("batchnorm statistics not re-estimated: %s", str(exc).splitlines()[0])
            for path, (mean, var) in saved.items():
                self.norms[path].running_mean.copy_(mean)
                self.norms[path].running_var.copy_(var)
        finally:
            for bn in self.norms.values():
                bn.momentum = _MOMENTUM

    @torch.no_grad()
    def fold(self, model: torch.nn.Module, inputs: Sequence[torch.Tensor] | None = None) -> int:
        """Re-estimate on ``inputs`` (when given), fold every active BN into its conv's (baked)
        weight and bias, and remove the hooks. Returns the number of convolutions folded."""
        folded = 0
        if self.active and inputs:
            self.reestimate(model, inputs)
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for path, bn in self.norms.items():
            if not bn.active:
                continue
            conv = self.convs[path]
            scale = bn.weight / (bn.running_var + _EPS).sqrt()
            shift = bn.bias - bn.running_mean * scale
            scale = torch.where(bn.live, scale, torch.ones_like(scale))
            shift = torch.where(bn.live, shift, torch.zeros_like(shift))
            weight = _raw_weight(conv)
            weight.mul_(scale.view(-1, *[1] * (weight.ndim - 1)).to(weight.dtype))
            conv.bias.mul_(scale.to(conv.bias.dtype)).add_(shift.to(conv.bias.dtype))
            bn.active = False
            folded += 1
        log.info("batchnorm folded back into %d convolutions", folded)
        return folded


def _raw_weight(conv: torch.nn.Module) -> torch.Tensor:
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(conv, "weight"):
        raise RuntimeError("fold the re-inserted BatchNorm after the gates are baked")
    return conv.weight


def _forward_in_chunks(model: torch.nn.Module, inputs: Sequence[torch.Tensor], train_bn: bool) -> None:
    """One pass over ``inputs`` in eval mode (the re-inserted BNs in train mode when ``train_bn``:
    they read the conv's flag, so the convs are switched to train; a Conv has no train-time
    behaviour of its own)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    if train_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.conv._ConvNd):
                module.train()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for start in range(0, len(inputs[0]), _STATISTICS_BATCH):
            model(*[x[start:start + _STATISTICS_BATCH].to(device) for x in inputs])
    finally:
        for module, mode in modes.items():
            module.train(mode)
