"""Global magnitude pruning with a gradual (cubic) schedule: the baseline every method must beat.

Sparsity follows Zhu & Gupta (2017), "To prune, or not to prune":

    s(t) = s_f * (1 - (1 - t / T)^3)    for 0 <= t <= T,    s(t) = s_f after,

with t the optimizer step and T = ``--prune-ramp`` of all steps; the rest of training
fine-tunes with the final mask. At each mask update the weights of smallest |w| across all
prunable tensors jointly (one global threshold, so per-layer sparsity follows the weights'
scale) are zeroed. Pruned weights stay zero: their gradients are masked after backward and the
weights re-masked after every optimizer step (momentum could otherwise revive them), and since
they are zero they rank lowest at the next update, so the masks only shrink.

``--criterion lamp`` ranks by LAMP scores instead (Lee et al. 2021, "Layer-adaptive sparsity
for the magnitude-based pruning"): with a tensor's weights sorted by |w| in descending order,

    score(w_u) = w_u^2 / sum_{v <= u} w_v^2     (the largest weight of every tensor scores 1),

which is invariant to each tensor's scale. A global |w| threshold is not: an export with
BatchNorm folded into its convs scales every output channel by gamma / sigma, so one layer's
weights can be 10^4 times another's (measured on a MobileNetV2 export: depthwise |w| means of
0.6 to 1960, 1x1 convs 0.01 to 0.11), and the global threshold then empties the small-scale
layers first (docs/real-models.md).

The plan is empty: magnitude makes zeros, not removed channels; the passes' dead-structure
elimination removes channels that died entirely.
"""

from __future__ import annotations

import dataclasses

import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.methods._support.projections import global_topk_mask
from onnxprune.methods.base import PruningMethod, TrainContext, register
from onnxprune.methods.options import MethodOptions, option, sparsity_option
from onnxprune.passes.plan import PruningPlan

# a global sort per update costs O(P log P); cap the number of updates for large models
_MAX_UPDATES = 100


def cubic_sparsity(step: int, ramp_steps: int, final: float) -> float:
    """Zhu & Gupta's schedule, starting from dense."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return final
    return final * (1.0 - (1.0 - step / ramp_steps) ** 3)


@torch.no_grad()
def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every entry: w^2 over the sum of w^2 of the entries at least as large."""
    squared = weight.detach().reshape(-1).to(torch.float64).square()
    order = torch.argsort(squared, descending=True, stable=True)
    mass_above = torch.cumsum(squared[order], 0)  # including the entry itself
    scores = torch.empty_like(squared)
    scores[order] = squared[order] / mass_above.clamp_min(torch.finfo(torch.float64).tiny)
    return scores.view(weight.shape)


@dataclasses.dataclass(frozen=True)
class MagnitudeOptions(MethodOptions):
    method = "magnitude"
    sparsity: float | None = sparsity_option()
    prune_ramp: float = option(0.75, "magnitude: fraction of training steps over which sparsity ramps up.", min=0, max=1)
    criterion: str = option("magnitude", "magnitude: rank weights by |w| (one global threshold) or by LAMP "
                            "scores (scale-invariant per tensor; for BatchNorm-folded exports).",
                            choices=("magnitude", "lamp"))


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    help = "Global magnitude pruning, gradual cubic schedule, distillation fine-tuning (baseline)."
    granularities = ("weight",)
    Options = MagnitudeOptions

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.sparsity is None:
            raise OnnxPruneError("--method magnitude needs --sparsity in [0, 1)")
        self.target = self.options.sparsity

    def setup(self, ctx: TrainContext) -> None:
        total_steps = self.total_epochs(ctx) * ctx.steps_per_epoch
        self.ramp_steps = int(round(self.options.prune_ramp * total_steps))
        self.update_every = max(1, -(-self.ramp_steps // _MAX_UPDATES))
        self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in ctx.weights.items()}
        self._update(ctx, cubic_sparsity(0, self.ramp_steps, self.target))

    def before_step(self, ctx: TrainContext) -> None:
        if ctx.step <= self.ramp_steps and ctx.step % self.update_every == 0:
            self._update(ctx, cubic_sparsity(ctx.step, self.ramp_steps, self.target))

    def after_backward(self, ctx: TrainContext) -> None:
        for name, w in ctx.weights.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[name])

    def after_step(self, ctx: TrainContext) -> None:
        self._apply(ctx)

    def finalize(self, ctx: TrainContext):
        self._update(ctx, self.target)  # exact target even when training stopped early
        per_layer = {name: 1.0 - float(m.float().mean()) for name, m in self.masks.items()}
        return PruningPlan(meta={"method": self.name, "sparsity": self.sparsity, "layer_sparsity": per_layer})

    def _update(self, ctx: TrainContext, sparsity: float) -> None:
        total = sum(w.numel() for w in ctx.weights.values())
        kept = total - int(round(sparsity * total))
        scores = dict(ctx.weights) if self.options.criterion == "magnitude" else {
            name: lamp_scores(w) for name, w in ctx.weights.items()}
        self.masks = global_topk_mask(scores, kept)
        self.sparsity = 1.0 - kept / max(total, 1)
        ctx.metrics["sparsity"] = self.sparsity
        self._apply(ctx)

    @torch.no_grad()
    def _apply(self, ctx: TrainContext) -> None:
        for name, w in ctx.weights.items():
            w.mul_(self.masks[name])
