"""LC: Learning-Compression pruning (Carreira-Perpiñán & Idelbayev, CVPR 2018).

Pruning as  min_w L(w)  s.t.  w = θ, θ in the compression set C (e.g. ||θ||_0 <= κ), solved by
the augmented Lagrangian  L(w) − λᵀ(w − θ) + μ/2 ||w − θ||²  with μ driven up geometrically:

    θ = Π(w), λ = 0                                    direct compression start
    for μ_j = μ0 · a^j, j = 0..J−1:
        L step: SGD on L(w) + μ_j/2 ||w − θ − λ/μ_j||², warm-started from w
        C step: θ = Π(w − λ/μ_j)                       (``projections``: ℓ0/ℓ1 constraint or penalty)
        λ ← λ − μ_j (w − θ)
    output θ (then an optional fine-tune with θ's zero pattern fixed)

The loop's steps are shared out evenly: the first (1 − ``--lc-finetune``) of them make J L steps
(J = ``--lc-steps``), the rest fine-tune with the mask fixed. ||w − θ|| is logged per LC step
(``ctx.history``, ``lc_gap``) and should approach 0. The ℓ0 budget κ = (1 − sparsity)·N is one
global top-κ across all pruned tensors, so the per-layer densities are learned.

``--granularity channel`` [design]: the variables are the channel groups' gate tensors (BN
gamma+beta or the producing rows + bias); the compression set is "at most κ channels nonzero, at
least one per group", and each C step is the exact projection for the penalty it is paired with:

- ``--lc-channel-norm plain`` (default): the unweighted μ/2‖w − θ − λ/μ‖²; Π keeps each group's
  largest channel and then the channels of largest plain ℓ2 norm up to κ.
- ``--lc-channel-norm relative``: the penalty weighted per channel by c_g = 1 / (mean squared
  channel norm of its group at the start, normalised to mean 1), μ/2 Σ c_g‖w_g − θ_g − λ_g/μ‖²;
  Π then ranks channels by c_g‖w_g‖² (norm relative to the layer), its exact projection.

(Until issue 18 the C step ranked by relative norm while the penalty was unweighted, so it was
not the projection for the penalty being minimised; docs/methods-lc-ltp.md has the comparison.)
Rounding each group's kept count to ``--channel-multiple`` is applied once, in the last C step
(the output θ), so the LC iterations use the exact projection; the plan keeps those channels,
whose removal by the passes is then exact.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.methods._support import projections
from onnxprune.methods._support import threshold_masks as masking
from onnxprune.methods.base import PruningMethod, TrainContext, register
from onnxprune.methods.options import (
    MethodOptions,
    channel_multiple_option,
    granularity_option,
    option,
    sparsity_option,
)

log = logging.getLogger(__name__)

FORMS = ("l0-constraint", "l1-constraint", "l0-penalty", "l1-penalty")


@dataclasses.dataclass(frozen=True)
class LCOptions(MethodOptions):
    method = "lc"
    sparsity: float | None = sparsity_option()
    granularity: str = granularity_option()
    channel_multiple: int = channel_multiple_option()
    lc_form: str = option("l0-constraint", "LC: the compression set (C step).", choices=FORMS)
    mu0: float = option(1e-2, "LC: first penalty weight μ0.", min=0, min_open=True)
    mu_factor: float = option(1.3, "LC: μ grows by this factor per LC step.", min=1)
    lc_steps: int = option(20, "LC: number of L/C steps.", min=1)
    lc_alpha: float = option(1e-6, "LC: penalty weight α (penalty forms).", min=0)
    lc_radius: float = option(0.2, "LC: ℓ1-ball radius as a fraction of the original weights' ℓ1 norm "
                                   "(l1-constraint).", min=0, min_open=True)
    lc_channel_norm: str = option("plain", "LC, --granularity channel: plain ℓ2 norms with the unweighted penalty, "
                                           "or norms relative to the layer's mean with the penalty weighted the same "
                                           "way (each C step is the exact projection for its penalty).",
                                  choices=("plain", "relative"))
    lc_finetune: float = option(0.3, "LC: fraction of steps fine-tuned with θ's mask fixed after the last C step.",
                                min=0, max=1, max_open=True)


@register
class LC(PruningMethod):
    name = "lc"
    help = "Learning-Compression: augmented-Lagrangian pruning with one global budget."
    granularities = ("weight", "channel")
    Options = LCOptions
    analysis = None  # set in setup (channel groups, for the rounding of each group's kept count)

    def setup(self, ctx: TrainContext) -> None:
        o = self.options
        self.form = o.lc_form
        self.channel = o.granularity == "channel"
        if self.form == "l0-constraint" and o.sparsity is None:
            raise OnnxPruneError("--method lc --lc-form l0-constraint needs --sparsity")
        if self.channel and self.form != "l0-constraint":
            raise OnnxPruneError(f"--granularity channel supports --lc-form l0-constraint only, not {self.form}")
        self.analysis = ctx.analysis
        if self.channel:
            self.groups, self.vars = self._channel_variables(ctx)
            self.relative = o.lc_channel_norm == "relative"
            self.channel_weight = self._layer_normalization() if self.relative else None
            self.penalty_weight = self._penalty_weights() if self.relative else None
            count = len(self.groups)
        else:
            self.groups, self.vars = None, dict(ctx.weights)
            self.penalty_weight = None
            count = sum(w.numel() for w in self.vars.values())
        self.kappa = round((1.0 - (o.sparsity or 0.0)) * count)
        self.radius = o.lc_radius * float(sum(w.detach().abs().sum() for w in self.vars.values()))
        total = ctx.epochs * ctx.steps_per_epoch
        lc_total = total - round(o.lc_finetune * total)
        self.lc_steps = max(1, min(o.lc_steps, lc_total))
        self.l_length = max(1, lc_total // self.lc_steps)
        self.mu, self.j, self.gaps = o.mu0, 0, []
        self.lam = {n: torch.zeros_like(w) for n, w in self.vars.items()}
        self.theta = self._project({n: w.detach() for n, w in self.vars.items()})  # direct compression
        self.mask: dict[str, torch.Tensor] | None = None
        self._log(ctx)

    def _channel_variables(self, ctx: TrainContext):
        """Gate-tensor parameters (torch layout) and, per channel, its (name, axis, index) slices."""
        variables, groups, self.group_ids = {}, [], []
        for group, slices in masking.channel_slices(ctx):
            for k in range(slices[0].size):
                members = []
                for s in slices:
                    key = f"p{id(s.param)}"
                    variables[key] = s.param
                    members += [(key, s.axis, s.start + k * s.block + b) for b in range(s.block)]
                groups.append(members)
                self.group_ids.append((group.id, k))
        self.group_index: dict[str, torch.Tensor] = {}
        for i, (gid, _) in enumerate(self.group_ids):
            self.group_index.setdefault(gid, []).append(i)
        self.group_index = {gid: torch.tensor(v) for gid, v in self.group_index.items()}
        return groups, variables

    def _layer_normalization(self) -> torch.Tensor:
        """1 / (mean squared channel norm of its group at the start), per channel: BN-gated and
        row-gated layers have unrelated scales, so channels compete on their layer-relative norm."""
        sq = projections.group_sq_norms(self.vars, self.groups)
        sums: dict[str, list[float]] = {}
        for (gid, _), value in zip(self.group_ids, sq.tolist()):
            sums.setdefault(gid, []).append(value)
        mean = {gid: max(sum(v) / len(v), 1e-30) for gid, v in sums.items()}
        weight = torch.tensor([1.0 / mean[gid] for gid, _ in self.group_ids], dtype=torch.float64)
        # one common scale leaves the ranking unchanged; mean 1 keeps μ's schedule comparable
        return weight / weight.mean()

    def _penalty_weights(self) -> dict[str, torch.Tensor]:
        """Per element of each variable, its channel's weight c_g (0 where no prunable channel
        covers the element: it is unconstrained, θ = w there after every C step)."""
        weights = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in self.vars.items()}
        for members, c in zip(self.groups, self.channel_weight.tolist()):
            for name, axis, index in members:
                weights[name].select(axis, index).fill_(c)
        return weights

    def _project(self, values: dict[str, torch.Tensor], align: bool = False) -> dict[str, torch.Tensor]:
        if self.channel:
            self.keep = self._keep_channels(values, align)
            return projections.zero_groups(values, self.groups, self.keep)
        if self.form == "l0-constraint":
            return projections.l0_constraint(values, self.kappa)
        if self.form == "l1-constraint":
            return projections.l1_ball(values, self.radius)
        if self.form == "l0-penalty":
            return projections.l0_penalty(values, self.options.lc_alpha, self.mu)
        return projections.l1_penalty(values, self.options.lc_alpha, self.mu)

    def _keep_channels(self, values: dict[str, torch.Tensor], align: bool = False) -> torch.Tensor:
        """The exact projection's channels: each group's largest, then the top ones up to κ, by
        c_g·‖w_g‖² (c_g = 1 with plain norms); ``align`` then rounds each group's count."""
        sq = projections.group_sq_norms(values, self.groups)
        if self.channel_weight is not None:
            sq = sq * self.channel_weight
        keep = torch.zeros(len(self.groups), dtype=torch.bool)
        best: dict[str, int] = {}
        for i, (gid, _) in enumerate(self.group_ids):
            if gid not in best or sq[i] > sq[best[gid]]:
                best[gid] = i
        keep[list(best.values())] = True
        rest = sq.clone()
        rest[keep] = -1.0
        extra = max(0, self.kappa - int(keep.sum()))
        keep[torch.sort(rest, descending=True, stable=True).indices[:extra]] = True
        if not align:
            return keep
        for gid, index in self.group_index.items():  # runtime-friendly channel counts
            multiple = self.options.channel_multiple
            if self.analysis is not None:  # a group of attention heads: each head is d columns already
                multiple = masking.unit_multiple(self.analysis.group(gid), multiple)
            keep[index] = masking.align_kept(keep[index], sq[index], multiple)
        return keep

    def penalty(self, ctx: TrainContext) -> torch.Tensor | None:
        if self.mask is not None:
            return None
        total = 0.0
        for n, w in self.vars.items():
            sq = (w - self.theta[n] - self.lam[n] / self.mu).pow(2)
            total = total + (sq if self.penalty_weight is None else sq * self.penalty_weight[n]).sum()
        return 0.5 * self.mu * total

    def after_backward(self, ctx: TrainContext) -> None:
        if self.mask is not None:  # fine-tune: pruned entries get no gradient (no momentum drift)
            for n, w in self.vars.items():
                if w.grad is not None:
                    w.grad.mul_(self.mask[n])

    def after_step(self, ctx: TrainContext) -> None:
        if self.mask is not None:
            with torch.no_grad():
                for n, w in self.vars.items():
                    w.mul_(self.mask[n])
            return
        if (ctx.step + 1) % self.l_length or self.j >= self.lc_steps:
            return
        with torch.no_grad():
            shifted = {n: w.detach() - self.lam[n] / self.mu for n, w in self.vars.items()}
            # C step; the last one (the output θ) also rounds the kept channel counts
            self.theta = self._project(shifted, align=self.j + 1 == self.lc_steps)
            for n, w in self.vars.items():
                self.lam[n] -= self.mu * (w.detach() - self.theta[n])  # multiplier update
        self.j += 1
        self._log(ctx)
        self.mu *= self.options.mu_factor
        if self.j == self.lc_steps:
            self._output_theta()

    def _output_theta(self) -> None:
        """Replace w by θ and fix θ's zero pattern (LC outputs θ, not w)."""
        with torch.no_grad():
            for n, w in self.vars.items():
                w.copy_(self.theta[n])
        self.mask = {n: (t != 0).to(t.dtype) for n, t in self.theta.items()}

    def _log(self, ctx: TrainContext) -> None:
        gap = math.sqrt(sum(float((w.detach() - self.theta[n]).pow(2).sum()) for n, w in self.vars.items()))
        density = self.layer_density()
        total = sum(int((t != 0).sum()) for t in self.theta.values())
        self.gaps.append(gap)
        entry = {"lc_step": self.j, "mu": self.mu, "lc_gap": gap,
                 "density": total / max(1, sum(t.numel() for t in self.theta.values()))}
        ctx.metrics.update(lc_gap=gap, sparsity=1.0 - entry["density"])
        ctx.history.append({**entry, **{f"density/{k}": v for k, v in density.items()}})
        log.info("LC step %d: mu=%.3g ||w - theta||=%.4g density=%.4f", self.j, self.mu, gap, entry["density"])

    def layer_density(self) -> dict[str, float]:
        if self.channel:
            keep = self._channel_keep()
            return {gid: float(k.float().mean()) for gid, k in keep.items()}
        return {n: float((t != 0).float().mean()) for n, t in self.theta.items()}

    def _channel_keep(self) -> dict[str, torch.Tensor]:
        keep: dict[str, list[bool]] = {}
        for (gid, _), kept in zip(self.group_ids, self.keep.tolist()):
            keep.setdefault(gid, []).append(kept)
        return {gid: torch.tensor(v) for gid, v in keep.items()}

    def finalize(self, ctx: TrainContext):
        if self.mask is None:  # the loop ended before the last C step (e.g. ctx.stop)
            if self.channel:
                with torch.no_grad():
                    self.theta = self._project({n: w.detach() - self.lam[n] / self.mu
                                                for n, w in self.vars.items()}, align=True)
            self._output_theta()
        with torch.no_grad():
            for n, w in self.vars.items():
                w.mul_(self.mask[n])
        meta = {"method": "lc", "form": self.form, "granularity": "channel" if self.channel else "weight",
                **({"channel_norm": "relative" if self.relative else "plain"} if self.channel else {}),
                "lc_steps": self.j, "layer_density": self.layer_density(),
                "gaps": self.gaps}
        keep = self._channel_keep() if self.channel else {}
        return masking.plan_from_keep(keep, meta)
