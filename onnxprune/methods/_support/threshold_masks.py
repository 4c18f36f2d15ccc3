"""Masks on weights addressed by ONNX name: LTP's soft threshold and the hard masks of the outputs.

LTP's soft mask of a tensor x with per-element score s (s = x² for weights, s = the channel's
squared ℓ2 norm broadcast over its slice for channels), threshold τ and temperature T:

    m = sigmoid((s − τ) / T),        v = x · m.

Its exact derivative is ∂v/∂x = m + x · σ'(·) · ∂s/∂x / T (for s = x²: m + 2x²σ'/T). The
second term is large inside the transition band and throws weights out of it, so LTP uses the
simplified gradient ∂v/∂x ≈ m. :class:`SoftThreshold` implements that choice as an autograd
Function: x receives g·m, τ its exact gradient −Σ g·x·σ'/T, and s a gradient only when the
exact (full) derivative is requested, so the two variants can be compared.

The mask enters the forward through ``torch.nn.utils.parametrize``: the module's parameter stays
the same ``nn.Parameter`` object (the optimizer's), only its use in ``forward`` is masked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.utils import parametrize

from onnxprune.errors import OnnxPruneError


class SoftThreshold(torch.autograd.Function):
    """v = x · sigmoid((s − τ)/T) with the simplified or the exact gradient (see module doc)."""

    @staticmethod
    def forward(ctx, x, score, tau, temperature, simplified: bool):
        z = (score - tau) / temperature
        m = torch.sigmoid(z)
        ctx.save_for_backward(x, m, tau, temperature)
        ctx.simplified = simplified
        return x * m

    @staticmethod
    def backward(ctx, grad):
        x, m, tau, temperature = ctx.saved_tensors
        dsig = m * (1 - m)  # σ'(z)
        g_z = grad * x * dsig / temperature  # ∂v/∂s, elementwise
        grad_x = grad * m
        grad_score = None if ctx.simplified else g_z
        grad_tau = -g_z.sum().reshape(tau.shape)  # one threshold per layer (or channel group)
        return grad_x, grad_score, grad_tau, None, None


def soft_threshold(x: torch.Tensor, score: torch.Tensor, tau: torch.Tensor, temperature: torch.Tensor,
                   simplified: bool = True) -> torch.Tensor:
    return SoftThreshold.apply(x, score, tau, temperature, simplified)


def locate(model: torch.nn.Module, param: torch.nn.Parameter) -> tuple[torch.nn.Module, str]:
    """The (module, attribute) holding ``param``, found by identity (robust to any naming)."""
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is param:
                return module, attr
        if parametrize.is_parametrized(module):
            for attr, plist in module.parametrizations.items():
                if plist.original is param:
                    return module, attr
    raise KeyError("parameter is not part of the model")


class MaskFn(torch.nn.Module):
    """A parametrization that applies ``fn(x)``; ``enabled = False`` makes it the identity.

    ``fn`` is held in a plain attribute so that thresholds it closes over are not registered
    as model parameters (the method hands them to the optimizer in their own group).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.__dict__["fn"] = fn
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) if self.enabled else x


def attach(model: torch.nn.Module, param: torch.nn.Parameter, fn: Callable) -> MaskFn:
    module, attr = locate(model, param)
    mask = MaskFn(fn)
    parametrize.register_parametrization(module, attr, mask)
    return mask


def detach_all(model: torch.nn.Module) -> None:
    """Remove every parametrization, keeping the raw (unmasked) parameters in place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)


@contextlib.contextmanager
def substituted(values: dict[torch.nn.Parameter, torch.Tensor], masks: list[MaskFn]) -> Iterator[None]:
    """Temporarily give parameters new values with every soft mask off (e.g. a hard-masked copy
    for evaluation or write-back), restoring values and masks afterwards."""
    saved = {p: p.detach().clone() for p in values}
    try:
        with torch.no_grad():
            for p, v in values.items():
                p.copy_(v)
        for m in masks:
            m.enabled = False
        yield
    finally:
        with torch.no_grad():
            for p, v in saved.items():
                p.copy_(v)
        for m in masks:
            m.enabled = True


# --------------------------------------------------------------------------- channel groups


class ChannelSlice:
    """One tensor's part of a channel group: ``size`` channels of ``block`` elements each from
    ``start`` along ``axis`` of a torch parameter (the ONNX axis, mirrored when the import stores
    the tensor transposed)."""

    def __init__(self, param: torch.nn.Parameter, axis: int, start: int, size: int, block: int = 1) -> None:
        self.param, self.axis, self.start, self.size, self.block = param, axis, start, size, block

    def sq_norms(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Squared ℓ2 norm of each channel's slice, shape [size]."""
        part = (self.param if x is None else x).narrow(self.axis, self.start, self.size * self.block)
        return part.movedim(self.axis, 0).reshape(self.size, -1).pow(2).sum(1)

    def expand(self, per_channel: torch.Tensor) -> torch.Tensor:
        """A multiplier shaped like the parameter: ``per_channel`` on the slice, 1 elsewhere."""
        n, width = self.param.shape[self.axis], self.size * self.block
        ones = per_channel.new_ones
        values = per_channel.to(self.param.dtype).repeat_interleave(self.block)
        full = torch.cat([ones(self.start), values, ones(n - self.start - width)])
        shape = [1] * self.param.dim()
        shape[self.axis] = n
        return full.reshape(shape)


def _parameter(imported, name: str) -> tuple[torch.nn.Parameter, bool]:
    ref = imported.params[name]
    module = imported.module.get_submodule(ref.module_path)
    if parametrize.is_parametrized(module, ref.attr):
        return module.parametrizations[ref.attr].original, bool(ref.transpose)
    return module._parameters[ref.attr], bool(ref.transpose)


def channel_slices(ctx) -> list[tuple[object, list[ChannelSlice]]]:
    """(group, its gate-tensor slices) for every prunable channel group of ``ctx.analysis``.

    The gate tensors are the ones whose joint scaling by g scales the channel's output by g
    (BN gamma+beta, or the producing weight rows + bias), so zeroing them zeroes the channel
    exactly and its removal by the passes changes nothing downstream."""
    if ctx.analysis is None or ctx.imported is None:
        raise OnnxPruneError("--granularity channel needs the model's channel groups (none were computed)")
    result = []
    for group in ctx.analysis.groups:
        if not group.prunable:
            continue
        slices = []
        for ta in group.gate_tensors:
            param, transposed = _parameter(ctx.imported, ta.name)
            axis = ta.axis if not transposed else param.dim() - 1 - ta.axis
            block = getattr(ta, "block", 1)
            slices.append(ChannelSlice(param, axis, ta.start, (ta.stop - ta.start) // block, block))
        if slices:
            result.append((group, slices))
    if not result:
        raise OnnxPruneError("--granularity channel: the model has no prunable channel group")
    return result


def plan_from_keep(keep: dict[str, torch.Tensor], meta: dict):
    """A PruningPlan keeping the channels marked True per group (at least one per group)."""
    from onnxprune.passes.plan import PruningPlan

    kept = {}
    for group_id, mask in keep.items():
        indices = torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()
        kept[group_id] = tuple(indices)
    return PruningPlan(kept=kept, meta=meta)


def align_kept(keep: torch.Tensor, scores: torch.Tensor, multiple: int) -> torch.Tensor:
    """Round a group's kept-channel count to a multiple of ``multiple`` (at least one multiple,
    at most the group size), adding the best-scoring pruned or dropping the worst kept channels.

    onnxruntime's CPU convolutions run blocked layouts (8 or 16 channels); a pruned layer with,
    say, 13 or 21 channels can be slower than the unpruned one (measured: docs/method-lc.md)."""
    size, count = keep.numel(), int(keep.sum())
    if multiple <= 1 or size <= multiple:
        return keep
    target = min(size, max(multiple, round(count / multiple) * multiple))
    order = torch.sort(scores.double().cpu(), descending=True, stable=True).indices
    aligned = torch.zeros_like(keep)
    ranked_kept = [int(i) for i in order if keep[i]]
    ranked_free = [int(i) for i in order if not keep[i]]
    chosen = ranked_kept[:target] + ranked_free[: max(0, target - len(ranked_kept))]
    aligned[chosen] = True
    return aligned


def unit_multiple(group, multiple: int) -> int:
    """The count a channel group's kept units round to a multiple of: ``multiple`` for single
    channels, 1 when one unit already spans ``multiple`` tensor elements or more everywhere (an
    attention head of d columns), as :meth:`onnxprune.methods._support.resource.Resource.multiples`."""
    blocks = [axis.block for axis in (*group.producers, *group.consumers)]
    return 1 if blocks and min(blocks) >= multiple else multiple
