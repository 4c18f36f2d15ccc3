"""Activation-statistics recalibration after a hard channel selection (BN re-estimation that also
works when BatchNorm is folded into the convolutions).

Removing channels shifts and rescales what every later layer sees. With BatchNorm kept, the
usual remedy is to re-estimate its running statistics; exporters fold BN into the convolutions,
so there are none left. The same correction is applied to the convolutions themselves: for every
Conv output channel c that is kept, with mean and standard deviation over batch and space

    teacher (the original network):  mu_t[c], sigma_t[c]
    student (the pruned network):    mu_s[c], sigma_s[c]

the channel is mapped affinely onto the teacher's statistics,

    y'[c] = (y[c] - mu_s[c]) * a[c] + mu_t[c],   a[c] = sigma_t[c] / sigma_s[c],

which is folded into the convolution: ``W[c] *= a[c]``, ``b[c] = (b[c] - mu_s[c]) * a[c] + mu_t[c]``.
Layers are corrected in one forward pass in graph order, each seeing the already corrected
layers before it (a hook rewrites the output on the fly), so the corrections do not compound.
Channels whose student output is constant (removed: gate 0) are left alone. The statistics
come from one forward pass (no grad) over ``ctx.calibration``, up to 256 inputs at once, so the
memory it needs grows with the input size (a MobileNetV2 prune at 224 px peaked at 6.6-7.9 GB
RSS with it). ``a`` is clipped
to [1/4, 4]: a channel that pruning nearly silenced is not blown back up from noise.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_EPS = 1e-6


def _channel_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(y.ndim) if d != 1]
    return y.mean(dim=dims), y.std(dim=dims)


def _raw(module: torch.nn.Module, attr: str) -> torch.Tensor | None:
    """The trainable tensor behind ``module.attr`` (the original under a gate parametrization)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr, None)


@torch.no_grad()
def recalibrate(student: torch.nn.Module, teacher: torch.nn.Module, inputs: list[torch.Tensor],
                max_scale: float = 4.0) -> int:
    """Fold the correction above into every ``Conv2d``/``Conv1d`` of ``student`` that has a bias and
    a twin in ``teacher`` (same module path). Returns the number of convolutions corrected."""
    modes = {m: m.training for m in student.modules()}  # restored at the end: training goes on
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    convs = {name: m for name, m in teacher.named_modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))}
    for name, module in convs.items():
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: targets.__setitem__(name, _channel_stats(out.float()))))
    try:
        teacher.eval()(*inputs)
    finally:
        for h in handles:
            h.remove()

    corrected = []
    handles = []

    def correct(name: str, module: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
        weight, bias = _raw(module, "weight"), _raw(module, "bias")
        if bias is None or name not in targets or out.shape[1] != targets[name][0].numel():
            return out
        mu_t, sigma_t = targets[name]
        mu_s, sigma_s = _channel_stats(out.float())
        live = (sigma_s > _EPS) & (sigma_t > _EPS)
        scale = torch.where(live, (sigma_t / sigma_s.clamp_min(_EPS)).clamp(1 / max_scale, max_scale),
                            torch.ones_like(sigma_s))
        shift = torch.where(live, mu_t - mu_s * scale, torch.zeros_like(mu_s))
        # a gated bias reads b_eff = b * gate: correct the raw b so that b_eff' = b_eff * a + shift
        nonzero = bias.abs() > 0
        gate = torch.where(nonzero, module.bias.detach() / torch.where(nonzero, bias, torch.ones_like(bias)),
                           torch.ones_like(bias))
        weight.mul_(scale.view(-1, *[1] * (weight.ndim - 1)).to(weight.dtype))
        bias.mul_(scale.to(bias.dtype)).add_((shift / gate.clamp_min(_EPS)).to(bias.dtype) * live)
        corrected.append(name)
        view = [1, -1] + [1] * (out.ndim - 2)
        return out * scale.view(view).to(out.dtype) + shift.view(view).to(out.dtype)

    for name, module in student.named_modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
            handles.append(module.register_forward_hook(
                lambda m, _i, out, name=name: correct(name, m, out)))
    try:
        student.eval()(*inputs)
    finally:
        for h in handles:
            h.remove()
        for module, training in modes.items():
            module.train(training)
    log.info("recalibrated %d convolutions on %d samples", len(corrected), len(inputs[0]))
    return len(corrected)


def recalibrate_to_teacher(ctx, teacher: torch.nn.Module | None) -> None:
    """:func:`recalibrate` ``ctx.model`` on the calibration inputs the loop keeps
    (``ctx.calibration``) against ``teacher`` (the original, copied at setup); nothing without
    either. A model that cannot run the calibration batch (one that runs only at its fixed
    batch) is left as it is, with a warning."""
    if teacher is None or not ctx.calibration:
        return
    inputs = [x.to(ctx.device) for x in ctx.calibration]
    try:
        recalibrate(ctx.model, teacher.to(ctx.device), inputs)
    except RuntimeError as exc:
        log.warning("recalibration skipped: %s", str(exc).splitlines()[0])
