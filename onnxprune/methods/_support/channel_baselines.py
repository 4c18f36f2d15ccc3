"""Channel-pruning baselines for the structured methods' comparisons (not registered methods).

Both choose the channels once, from the weights, before training, then fine-tune with that
selection fixed for the whole budget, and export exactly like the Lagrangian method (the same
gates, plan and passes), so a comparison differs only in *which* channels are kept:

- magnitude: a channel's importance is the L2 norm of its producers' weight rows (every
  Conv/Gemm/MatMul weight slice of the group); one global ranking across groups, channels kept
  in descending order until the MACs meet the target (:func:`resource.select_to_budget`).
  It depends on the weights' per-layer scale, which the Lagrangian gates do not.
- uniform: every group keeps the same fraction of its channels (its largest-norm ones), the
  fraction found by bisection so that the MACs meet the target.

Both round kept counts to ``--channel-multiple`` like the methods they are compared with.
"""

from __future__ import annotations

import math

import torch

from onnxprune.methods._support.resource import round_counts, select_to_budget
from onnxprune.methods.base import TrainContext
from onnxprune.methods.lagrangian import Lagrangian


def channel_norms(ctx: TrainContext, group) -> torch.Tensor:
    """L2 norm per channel over the group's producer weight slices (tensors of rank >= 2)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for ta in group.producers:
        if ta.name not in ctx.imported.params:
            continue
        w = ctx.imported.tensor(ta.name).detach().to(torch.float64)
        if w.ndim < 2:
            continue
        rows = w.movedim(ta.axis, 0)[ta.start:ta.stop].reshape(group.size, -1)
        total += rows.square().sum(dim=1)
    return total.sqrt()


class FixedChannels(Lagrangian):
    """Select at setup, fine-tune with the selection fixed (no taper)."""

    def choose(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        groups = {g.id: g for g in ctx.analysis.groups}
        scores = {gid: channel_norms(ctx, groups[gid]) for gid in self.scores}
        self.masks = self.choose(scores)
        self.selection = {gid: m.float().to(ctx.device) for gid, m in self.masks.items()}
        self.taper_epochs = 0
        self.recalibrate(ctx)
        self.start_batchnorm(ctx)

    def end_epoch(self, ctx: TrainContext) -> None:
        ctx.metrics["macs_frac"] = self.structure.resource.hard(self.masks) / self.b0


class MagnitudeChannels(FixedChannels):
    name = "magnitude-channels"

    def choose(self, scores):
        return select_to_budget(scores, self.structure.resource, self.target, multiple=self.multiple)


class UniformChannels(FixedChannels):
    name = "uniform-channels"

    def choose(self, scores):
        def masks_at(frac: float) -> dict[str, torch.Tensor]:
            masks = {}
            for gid, s in scores.items():
                k = max(1, math.ceil(frac * len(s)))
                m = torch.zeros(len(s), dtype=torch.bool)
                m[torch.argsort(s, descending=True)[:k]] = True
                masks[gid] = m
            return round_counts(scores, masks, self.structure.resource.multiples(self.multiple))

        # rounded counts make the MACs a step function of the fraction: scan it for the largest
        # MACs that still meet the target
        best, best_cost = masks_at(0.0), -1.0
        for step in range(1001):
            masks = masks_at(step / 1000)
            cost = self.structure.resource.hard(masks)
            if best_cost < cost <= self.target:
                best, best_cost = masks, cost
        return best
