"""Differentiable MAC (and parameter) resource of a gated network.

Every MAC-bearing node contributes ``macs_t`` at full width. With ``f_G = sum(g_G) / |G|`` the
(expected) kept fraction of channel group ``G`` and ``b_B`` the keep value of residual branch
``B``, the resource is the multilinear function

    R(g, b) = c + sum_t macs_t * f_in(t) * f_out(t) * prod_{B contains t} b_B

(a depthwise node has one factor, ``f_out``: its input and output channels are the same group;
a side that is not a prunable group contributes 1). It is bilinear in neighbouring layers' gates,
so ``dR/dg`` charges a channel for the MACs it enables on both sides. With Bernoulli gates
(independent ``xi ~ Bern(theta)``) the same formula evaluated at ``theta`` is the exact expected
cost. Parameters use the same form with ``params_t`` instead of ``macs_t``.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Term:
    """One MAC-bearing node (or a fixed cost when both groups are None and no branch)."""

    macs: float
    params: float = 0.0
    in_group: str | None = None
    out_group: str | None = None
    depthwise: bool = False
    branches: tuple[str, ...] = ()


class Resource:
    """``R(fractions, branch_keep)`` vectorized over terms; groups and branches by id."""

    def __init__(self, terms: Sequence[Term], groups: Mapping[str, int], branches: Sequence[str] = ()):
        self.group_ids = list(groups)
        self.group_sizes = torch.tensor([float(groups[g]) for g in self.group_ids])
        self.branch_ids = list(branches)
        gidx = {g: i for i, g in enumerate(self.group_ids)}
        bidx = {b: i for i, b in enumerate(self.branch_ids)}
        one_g, one_b = len(self.group_ids), len(self.branch_ids)  # index of the constant 1
        depth = max([len(t.branches) for t in terms] + [1])
        ins, outs, brs = [], [], []
        for t in terms:
            outs.append(gidx.get(t.out_group, one_g) if t.out_group is not None else one_g)
            ins.append(one_g if t.depthwise or t.in_group is None else gidx.get(t.in_group, one_g))
            row = [bidx.get(b, one_b) for b in t.branches]
            brs.append(row + [one_b] * (depth - len(row)))
        self.ins, self.outs = torch.tensor(ins, dtype=torch.long), torch.tensor(outs, dtype=torch.long)
        self.brs = torch.tensor(brs, dtype=torch.long).reshape(len(terms), depth)
        self.macs = torch.tensor([float(t.macs) for t in terms], dtype=torch.float64)
        self.params = torch.tensor([float(t.params) for t in terms], dtype=torch.float64)
        self.total_macs = float(self.macs.sum())
        self.total_params = float(self.params.sum())

    def fractions(self, gates: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Kept fraction per group (missing groups keep everything), with the constant 1 appended."""
        parts = []
        for gid, size in zip(self.group_ids, self.group_sizes):
            g = gates.get(gid)
            parts.append(torch.ones((), dtype=torch.float64) if g is None else g.to(torch.float64).sum() / size)
        parts.append(torch.ones((), dtype=torch.float64))
        return torch.stack(parts)

    def _keep(self, branch_keep: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        parts = [torch.as_tensor((branch_keep or {}).get(b, 1.0), dtype=torch.float64).reshape(()) for b in self.branch_ids]
        return torch.stack(parts + [torch.ones((), dtype=torch.float64)])

    def __call__(self, gates: Mapping[str, torch.Tensor], branch_keep: Mapping[str, torch.Tensor] | None = None, *, weights: str = "macs") -> torch.Tensor:
        f = self.fractions(gates)
        b = self._keep(branch_keep)
        per_term = f[self.ins] * f[self.outs] * b[self.brs].prod(dim=1)
        cost = self.macs if weights == "macs" else self.params
        return (cost * per_term).sum()

    def hard(self, masks: Mapping[str, torch.Tensor], dropped_branches: Sequence[str] = (), *, weights: str = "macs") -> float:
        """The cost of a 0/1 selection (kept channels per group, removed branches)."""
        keep = {b: torch.tensor(0.0) for b in dropped_branches}
        with torch.no_grad():
            return float(self({k: v.float() for k, v in masks.items()}, keep, weights=weights))
