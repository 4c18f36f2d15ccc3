"""Gating machinery shared by the structured methods (Lagrangian, Bernoulli).

A channel group's *gate tensors* are initializer slices ``W[..., start:stop, ...]`` (ONNX name,
axis, ``block`` elements per channel) whose joint scaling by a vector ``g`` scales the group's channel outputs by ``g`` (BN
gamma and beta, or a conv/gemm weight's output rows and bias). A residual branch's gate tensors
scale the whole branch output, so the branch gate is one scalar broadcast over the slice.

We gate the live torch parameters with ``torch.nn.utils.parametrize``: the parameter that an ONNX
initializer maps to becomes ``W_eff = W * v`` with ``v = 1`` outside ``[start, stop)`` and
``v[start:stop] = g``, where ``g`` is read from a :class:`GateBank` on every access. The method
decides what the bank returns (sigmoid of a score, a Bernoulli sample, a fixed 0/1 mask); an
absent key means "no gate" (identity). Several gates on one tensor stack multiplicatively (a
branch's last BN carries both its channel group's gate and the branch gate).

:func:`bake` folds the gates into the weights (``W <- W * v``) and removes the
parametrizations, so ``write_back`` sees plain parameters under their original names.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterable, Iterator

import torch
from torch.nn.utils import parametrize

GateFn = Callable[[], torch.Tensor]


class GateBank:
    """Current gate value per key (group id or branch id), computed lazily per access."""

    def __init__(self) -> None:
        self._fns: dict[str, GateFn] = {}

    def set(self, key: str, fn: GateFn | None) -> None:
        if fn is None:
            self._fns.pop(key, None)
        else:
            self._fns[key] = fn

    def clear(self) -> None:
        self._fns.clear()

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        """Every gated parameter reads as its raw (ungated) value inside the block."""
        saved, self._fns = self._fns, {}
        try:
            yield
        finally:
            self._fns = saved

    def get(self, key: str) -> torch.Tensor | None:
        fn = self._fns.get(key)
        return None if fn is None else fn()


@dataclasses.dataclass(frozen=True)
class GateSite:
    """One torch parameter slice gated by one key: ``module.attr`` scaled along ``axis``."""

    key: str
    module_path: str
    attr: str
    axis: int  # torch layout
    start: int
    stop: int
    block: int = 1  # elements per channel along the axis (a Flatten spreads a channel over H*W)


class _AxisScale(torch.nn.Module):
    """Parametrization ``W -> W * v`` with ``v`` the bank's gate for ``key`` along one axis."""

    def __init__(self, bank: GateBank, site: GateSite, length: int) -> None:
        super().__init__()
        self.bank, self.site, self.length = bank, site, length

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        gate = self.bank.get(self.site.key)
        if gate is None:
            return weight
        s = self.site
        gate = gate.to(weight.dtype).reshape(-1)
        gate = gate.expand(s.stop - s.start) if gate.numel() == 1 else gate.repeat_interleave(s.block)
        parts = [gate]
        if s.start > 0:
            parts.insert(0, gate.new_ones(s.start))
        if s.stop < self.length:
            parts.append(gate.new_ones(self.length - s.stop))
        shape = [1] * weight.ndim
        shape[s.axis] = self.length
        return weight * torch.cat(parts).reshape(shape)


def sites_from_onnx(imported, key: str, tensor_axes: Iterable) -> list[GateSite]:
    """Map ONNX ``TensorAxis(name, axis, start, stop)`` slices to torch parameter sites.

    ``imported.params[name]`` is ``ParamRef(module_path, attr, transpose)``; a transposed 2-D
    parameter (Gemm transB=0 / MatMul weights as nn.Linear) swaps the axis.
    """
    sites = []
    for ta in tensor_axes:
        ref = imported.params[ta.name]
        axis = ta.axis
        if ref.transpose:
            axis = 1 - axis
        sites.append(GateSite(key, ref.module_path, ref.attr, axis, ta.start, ta.stop, getattr(ta, "block", 1)))
    return sites


def install(model: torch.nn.Module, bank: GateBank, sites: Iterable[GateSite]) -> None:
    """Register one parametrization per site (stacking on tensors gated more than once)."""
    for site in sites:
        module = model.get_submodule(site.module_path)
        weight = getattr(module, site.attr)
        length = weight.shape[site.axis]
        if not 0 <= site.start < site.stop <= length:
            raise ValueError(f"gate slice [{site.start}:{site.stop}] outside {site.module_path}.{site.attr} axis {site.axis} of size {length}")
        parametrize.register_parametrization(module, site.attr, _AxisScale(bank, site, length))


def bake(model: torch.nn.Module) -> None:
    """Fold every installed gate into its weight and drop the parametrizations."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for attr in list(module.parametrizations.keys()):
            if all(isinstance(p, _AxisScale) for p in module.parametrizations[attr]):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)


def original(model: torch.nn.Module, module_path: str, attr: str) -> torch.Tensor:
    """The raw (ungated) parameter behind a possibly parametrized attribute."""
    module = model.get_submodule(module_path)
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


class Structure:
    """What a structured method needs from the analysis: prunable groups and residual branches
    with their gate sites, and the resource over them (:class:`resource.Resource`)."""

    def __init__(self, groups: dict[str, int], group_sites: dict[str, list[GateSite]],
                 branches: dict[str, list[GateSite]], resource) -> None:
        self.groups, self.group_sites, self.branches, self.resource = groups, group_sites, branches, resource
        self.chunks: dict[str, int] = {}  # conv groups per channel group (> 1: a grouped Conv's channels)

    @classmethod
    def from_context(cls, ctx, with_branches: bool = False) -> "Structure":
        from onnxprune.methods._support.resource import Resource, terms_from_analysis

        analysis, imported = ctx.analysis, ctx.imported
        if analysis is None:
            raise ValueError("structured methods need the channel-group analysis (ctx.analysis)")
        groups, sites = {}, {}
        for group in analysis.groups:
            tensors = [ta for ta in group.gate_tensors if ta.name in imported.params]
            if group.prunable and group.size > 1 and tensors:
                groups[group.id] = group.size
                sites[group.id] = sites_from_onnx(imported, group.id, tensors)
        branches = {}
        if with_branches:
            for branch in analysis.residual_branches:
                tensors = [ta for ta in branch.gate_tensors if ta.name in imported.params]
                if tensors:
                    branches[branch.id] = sites_from_onnx(imported, branch.id, tensors)
        terms = terms_from_analysis(analysis, imported.onnx_model, branches)
        structure = cls(groups, sites, branches, Resource(terms, groups, list(branches)))
        structure.chunks = {g.id: g.chunks for g in analysis.groups if g.id in groups and g.chunks > 1}
        return structure

    def install(self, model: torch.nn.Module, bank: GateBank) -> None:
        install(model, bank, [s for sites in self.group_sites.values() for s in sites])
        install(model, bank, [s for sites in self.branches.values() for s in sites])

    def bake(self, model: torch.nn.Module) -> None:
        bake(model)

    def plan(self, masks: dict[str, torch.Tensor], dropped_branches=(), meta: dict | None = None):
        from onnxprune.methods._support.chunks import round_plan
        from onnxprune.passes.plan import PruningPlan

        kept = {gid: tuple(int(i) for i in torch.nonzero(m).flatten()) for gid, m in masks.items()
                if not bool(m.all())}
        plan = PruningPlan(kept=kept, dropped_branches=tuple(dropped_branches), meta=meta or {})
        # a grouped Conv's channels: equally many kept per conv group, rounded up (exact, see chunks.py)
        return round_plan(plan, self.chunks, self.groups)

    @staticmethod
    def average_grads(params) -> None:
        """Gate parameters live outside the model, so DDP does not average their gradients."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
