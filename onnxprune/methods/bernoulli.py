"""Bernoulli unit and residual-layer pruning (after Guenter & Sideris, arXiv 2411.09127).

Each unit/filter j of every prunable channel group is multiplied by ``xi_j ~ Bern(theta_j)``
and each residual branch l (``x + f_l(x)``, from the graph's residual_branches: CNN blocks and
transformer sublayers alike) by ``zeta_l ~ Bern(phi_l)``. The objective is

    E[L] + strength * ( 2(1-a) * C(theta, sg(phi)) + 2a * C(sg(theta), phi) ),
    C = f * MACs(theta, phi) / MACs0 + (1-f) * Params(theta, phi) / Params0,

with ``a = --layer-vs-unit``, ``f = --flops-vs-params`` and ``sg`` stop-gradient. C is the exact
expected cost (:mod:`resource`: multilinear in theta and phi, so a unit's cost is coupled to its
neighbours' theta and its block's phi); the ``a`` split weights the units' and the layers' share
of it without changing C's value at a = 1/2. ``strength`` is the loss (in the distillation
loss's units) that removing the whole model is worth.

Gradient estimator: the binary-concrete relaxation of Bern(theta) (Maddison et al. 2017; the
reparameterization the L0 gates of Louizos et al. 2018 build on): with ``u ~ U(0, 1)`` per gate
and step, ``xi = sigmoid((logit theta + logit u) / tau)``, tau = 2/3. ``xi > 1/2`` exactly when
the Bernoulli sample would be 1 (probability theta), most samples are within 0.1 of 0 or 1, the
gradient flows through the samples that are in transit, so it measures the loss change of
switching a structure off or on (a straight-through estimator only sees the slope at the
sample, about 0 at a trained optimum: a pilot with it left most parameters undecided). It is
biased by the relaxation but has reparameterization-gradient variance (REINFORCE's is far
larger); the cost's gradient is exact. One gate sample per batch (gates scale weights).
theta and phi take projected Adam steps (clamped to [0, 1]); one below ``eps`` is fixed at 0
for good, one above ``1 - eps`` at 1 (a plain structure); every group keeps its last unit (only
residual layers can vanish whole). The last ``--finetune-epochs`` round the remaining ones to
0 or 1 and fine-tune with all gates fixed. ``--target-macs`` turns ``strength`` into a
controlled variable: log(strength) follows the expected MACs' excess over a level that tapers
from the start's expected MACs to the target over ``--pace-epochs`` (aimed at the target from
the first step, the strength took a pretrained network to a quarter of its MACs within one
epoch); structures lock only once the level is at the target, and a residual layer is not
removed when without it the rounding could not reach the target's band. The rounding moves the
kept counts into [0.99, 1] x target (``resource.refine_to_band``).

Per-structure weights: a unit's or layer's cost weight is its exact expected cost share (C's
gradient), so the knobs are the only inputs. ``--unit-weights auto`` also scales each group's
units by its loss slope per unit of cost, measured on the first steps (:meth:`group_weights`);
measured not better on the samples (docs/method-bernoulli.md, "Per-structure weights").

Settle phase (the second half of the pruning epochs): E[L] and C are affine in each theta_j
with the others fixed, so the minimum over [0, 1] is at 0 or 1 by the sign of the slope; the
marginal parameters, whose slope is noise about 0 where the cost and the loss balance, also step
against the sign of their slope's moving average, so training rather than rounding takes them
to 0 or 1 (docs/method-bernoulli.md, "Target and decisions").

Removed structures leave the trained model too (``--compact``, default on; :mod:`compaction`):
at the end of an epoch where the units and layers removed since the last compaction are worth
at least ``min_saving`` (5%) of the trained model's MACs, the model is rebuilt without them by
the export's own passes and training goes on with the smaller one (weights, Adam moments and
gates carried over; the gated outputs before and after are checked equal). theta and phi stay
in the original numbering (a compacted group's gate reads ``theta[units]``), so the cost, the
rounding and the plan are unchanged; a group keeps the dead units that rounding to
``--channel-multiple`` could still bring back (with ``--target-macs``, rounding may bring back
any dead unit to fill the target, so until rounding only residual layers are compacted). Per epoch the history has ``macs_expected``,
``macs_frac`` (the survivors) and ``macs_trained`` (the model that epoch actually trained).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time

import numpy as np
import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.methods._support.channel_gates import GateBank, Structure
from onnxprune.methods._support.compaction import Compaction, CompactionError, same_outputs
from onnxprune.methods._support.recalibrate import recalibrate_to_teacher
from onnxprune.methods._support.resource import parse_target, refine_to_band, round_counts, select_to_budget
from onnxprune.methods.base import PruningMethod, TrainContext, register
from onnxprune.methods.options import (
    MethodOptions,
    channel_multiple_option,
    gate_lr_option,
    latency_table_option,
    option,
    recalibrate_option,
    target_macs_option,
)

log = logging.getLogger(__name__)


def knob_split(cost, theta: dict, phi: dict, unit_w: float) -> torch.Tensor:
    """``unit_w * C(theta, sg(phi)) + (2 - unit_w) * C(sg(theta), phi)``: the units get
    ``unit_w`` times C's gradient, the layers ``2 - unit_w`` times (unit_w = 2(1 - a))."""
    sg = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
    return unit_w * cost(theta, sg(phi)) + (2 - unit_w) * cost(sg(theta), phi)


@dataclasses.dataclass(frozen=True)
class BernoulliOptions(MethodOptions):
    method = "bernoulli"
    target_macs: str | None = target_macs_option()
    gate_lr: float | None = gate_lr_option()
    channel_multiple: int = channel_multiple_option()
    latency_table: str | None = latency_table_option()
    recalibrate: bool = recalibrate_option()
    strength: float = option(10.0, "bernoulli: accuracy vs pruning (loss worth the whole model's cost).", min=0)
    layer_vs_unit: float = option(0.5, "bernoulli: share of the cost charged to residual layers (1) vs units (0).",
                                  min=0, max=1)
    flops_vs_params: float = option(0.5, "bernoulli: cost weight of MACs (1) vs parameters (0).", min=0, max=1)
    finetune_epochs: int | None = option(None, "bernoulli: final epochs with all gates rounded to 0/1 "
                                               "[default: 1/3 of --epochs].", min=0)
    compact: bool = option(True, "bernoulli: rebuild the trained model without removed structures as training goes.")
    pace_epochs: int | None = option(None, "bernoulli, with --target-macs: epochs over which the strength controller's "
                                           "MACs level falls from the start to the target (0: the target from the "
                                           "first step) [default: half of the epochs before the fine-tune].", min=0)
    unit_weights: str = option("cost", "bernoulli: per-group weight of the units' cost: 'cost' (each unit its exact "
                                       "MAC/param share) or 'auto' (that share times its group's loss-sensitivity "
                                       "per unit cost, measured on the first steps).", choices=("cost", "auto"))


@register
class Bernoulli(PruningMethod):
    name = "bernoulli"
    help = "Units/filters and whole residual layers gated by learned Bernoulli variables."
    granularities = ("channel", "layer")
    Options = BernoulliOptions
    eps, lr, tau = 0.02, 0.05, 2 / 3
    # with --target-macs the rounded MACs land in [(1 - band) * target, target] where block moves
    # can reach it (docs/method-bernoulli.md, "Target and decisions")
    band = 0.01
    # integral gain of log(strength) on the expected MACs' relative excess over the level, per step
    gain = 0.05
    start_strength: float | None = None  # with a target: the controller's first strength (None: --strength)
    lock_after_pace, guard_branches = True, True
    settle_share, settle_rate, settle_beta = 0.5, 4.0, 0.9
    # unit_weights 'auto': the loss's slope per unit is averaged over the first weight_share of the
    # pruning steps (at least min_weight_steps), then each group's weight is fixed, clipped to
    # [1 / weight_clip, weight_clip]
    weight_share, min_weight_steps, weight_clip = 0.05, 10, 10.0
    # theta's start, probed per model (see probe_init): the smallest of the grid whose gate samples
    # leave the network within init_tol of the original (share of the way to a constant output).
    # 0.9 drops a tenth of the units per sample: on the digits MLP that costs 3% of the way, on
    # the digits mobilenet 87%, on a pretrained MobileNetV2 (model (a), BN folded) 85%, where the
    # run ended 12 points down (docs/real-models.md, cause 2); 0.995 costs model (a) 3%.
    init_grid, init_tol = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998), 0.05
    # a compaction (write-back, passes, re-import, check) costs about a tenth of an epoch on the
    # samples; 5% of the MACs for every remaining epoch repays it within two or three epochs
    min_saving = 0.05

    def setup(self, ctx: TrainContext) -> None:
        self.structure = s = Structure.from_context(ctx, with_branches=True)
        if self.options.latency_table:  # the resource is the table's predicted latency
            from onnxprune.methods._support.latency_table import latency_resource

            self.structure.resource = latency_resource(self.structure, ctx, self.options.latency_table)
            s = self.structure
        self.b0 = s.resource.total_macs
        self.p0 = max(s.resource.total_params, 1.0)
        cfg = self.options
        self.strength = cfg.strength if self.start_strength is None or not cfg.target_macs else self.start_strength
        self.unit_w = 2 * (1 - cfg.layer_vs_unit)
        self.flops_w = cfg.flops_vs_params
        from onnxprune.methods._support.resource import smallest_reachable

        floor = smallest_reachable(s.resource, cfg.channel_multiple)  # refused below it
        self.target = parse_target(cfg.target_macs, self.b0, floor=floor) if cfg.target_macs else None
        self.multiple = cfg.channel_multiple
        dev = ctx.device
        self.teacher = copy.deepcopy(ctx.model) if cfg.recalibrate else None
        self.fixed: dict[str, torch.Tensor] | None = None
        self.noise: dict[str, torch.Tensor] = {}
        self.bank = GateBank()
        s.install(ctx.model, self.bank)
        self.init, self.init_probe = self.probe_init(ctx)
        # a structure whose theta passes `lock` is plain for good: 1/5 of the start's distance
        # to 1 (0.98 from 0.9, the rule the digits tables were tuned with)
        self.lock = 1 - (1 - self.init) / 5
        self.theta = {g: torch.full((n,), self.init, device=dev, requires_grad=True) for g, n in s.groups.items()}
        self.phi = {b: torch.full((), self.init, device=dev, requires_grad=True) for b in s.branches}
        self.alive = {k: torch.ones_like(v, dtype=torch.bool) for k, v in {**self.theta, **self.phi}.items()}
        self.settled = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in self.alive.items()}
        self.params = [*self.theta.values(), *self.phi.values()]
        self.optimizer = torch.optim.Adam(self.params, lr=float(cfg.gate_lr or self.lr))
        for key in [*self.theta, *self.phi]:
            self.bank.set(key, lambda key=key: self._gate(key))
        epochs = self.total_epochs(ctx)
        ft = cfg.finetune_epochs
        self.prune_epochs = max(1, epochs - (int(ft) if ft is not None else max(1, epochs // 3)))
        # the controller's MACs level tapers from the start's expected MACs to the target over
        # pace_steps (the Lagrangian's budget does the same): aimed straight at the target, the
        # strength removed half of a pretrained MobileNetV2's MACs within its first epoch
        pace = cfg.pace_epochs if cfg.pace_epochs is not None else max(1, self.prune_epochs // 2)
        self.pace_steps = min(int(pace), self.prune_epochs) * max(1, ctx.steps_per_epoch)
        self.steps = 0
        prune_steps = self.prune_epochs * max(1, ctx.steps_per_epoch)
        self.settle_from = max(self.pace_steps if self.target is not None else 0,
                               int(prune_steps * (1 - self.settle_share)))
        self.settle_step = self.settle_rate / max(prune_steps - self.settle_from, 1) if self.settle_share > 0 else 0.0
        self.slope: dict[str, torch.Tensor] = {}
        # per-group weights of the units' cost (unit_weights 'auto', see group_weights): 1 until
        # measured on the first weight_steps steps, then fixed
        self.auto = cfg.unit_weights == "auto"
        self.weights = {g: 1.0 for g in self.theta}
        self.weight_steps = max(self.min_weight_steps, int(self.weight_share * prune_steps))
        self.loss_slope: dict[str, torch.Tensor] = {}
        self.cost_grads: tuple | None = None
        self.guard_memo: dict[tuple, bool] = {}
        self.start_macs = float(self.structure.resource(self.theta, self.phi).detach()) / self.b0
        self.min_expected = self.start_macs
        self.epoch_macs: list[float] = []
        self.trained_macs: list[float] = []
        self.current_bank = self.bank
        self.compacting = cfg.compact
        self.compaction = Compaction(ctx, s.groups) if self.compacting else None
        log.info("bernoulli: %d unit groups, %d residual layers, theta starts at %g (probe: %s)", len(self.theta),
                 len(self.phi), self.init, ", ".join(f"{t:g}: {f:.3f}" for t, f in self.init_probe))

    @torch.no_grad()
    def probe_init(self, ctx: TrainContext) -> tuple[float, list[tuple[float, float]]]:
        """theta's start: the smallest of ``init_grid`` whose gate samples (4 of them, every unit and
        layer at that theta) leave the outputs on up to 64 calibration inputs within ``init_tol``
        of the original, measured as MSE(sampled, original) / MSE(constant, original) (the constant
        is each output's mean: an input-blind network). A random stream of its own, so the run's
        draws are those it would make with a fixed start."""
        if not ctx.calibration:
            return self.init_grid[0], []
        inputs = [x[:64].to(ctx.device) for x in ctx.calibration]
        modes = {m: m.training for m in ctx.model.modules()}
        ctx.model.eval()
        try:
            reference = [o.float() for o in _as_tuple(ctx.model(*inputs))]  # no gate set yet: the original
        except RuntimeError as exc:  # e.g. a graph that only runs at its fixed batch
            log.warning("bernoulli: theta's start not probed (%s); using %g", str(exc).splitlines()[0],
                        self.init_grid[0])
            for module, mode in modes.items():
                module.train(mode)
            return self.init_grid[0], []
        spans = [float(((r - r.mean(0, keepdim=True)) ** 2).mean()) for r in reference]
        generator = torch.Generator().manual_seed(12345)
        keys = {**self.structure.groups, **{b: 0 for b in self.structure.branches}}
        trials, chosen = [], self.init_grid[-1]
        try:
            for theta in self.init_grid:
                shares = []
                for _ in range(4):
                    for key, n in keys.items():
                        u = torch.rand((n,) if n else (), generator=generator).clamp(1e-6, 1 - 1e-6)
                        xi = torch.sigmoid((math.log(theta / (1 - theta)) + torch.logit(u)) / self.tau).to(ctx.device)
                        self.bank.set(key, lambda xi=xi: xi)
                    out = _as_tuple(ctx.model(*inputs))
                    shares.append(sum(float(((o.float() - r) ** 2).mean()) / max(sp, 1e-12)
                                      for o, r, sp in zip(out, reference, spans)) / len(reference))
                trials.append((theta, sum(shares) / len(shares)))
                if trials[-1][1] <= self.init_tol:
                    chosen = theta
                    break
        finally:
            self.bank.clear()
            for module, mode in modes.items():
                module.train(mode)
        return chosen, trials

    def _param(self, key: str) -> torch.Tensor:
        return self.theta[key] if key in self.theta else self.phi[key]

    def _gate(self, key: str) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed[key]
        p, alive, settled = self._param(key), self.alive[key], self.settled[key]
        u = self.noise.get(key)
        if u is None:  # evaluation outside a step: the network that rounding would give
            return ((p >= 0.5) & alive | settled).to(p.dtype)
        # binary concrete sample of Bern(p): sigmoid((logit p + logit u) / tau)
        q = p.clamp(self.eps / 2, 1 - (1 - self.lock) / 2)
        gate = torch.sigmoid((torch.log(q) - torch.log1p(-q) + u) / self.tau)
        return torch.where(settled, torch.ones_like(gate), gate * alive)

    def before_step(self, ctx: TrainContext) -> None:
        if self.fixed is None:
            self.noise = self.sample_noise()

    def sample_noise(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``logit u``, ``u ~ U(0, 1)``, per gate (from ``generator``, else torch's global stream)."""
        draw = lambda p: (torch.rand_like(p) if generator is None  # noqa: E731
                          else torch.rand(p.shape, generator=generator).to(p.device))
        return {k: torch.logit(draw(p).clamp(1e-6, 1 - 1e-6)) for k, p in [*self.theta.items(), *self.phi.items()]}

    def cost(self, theta: dict, phi: dict) -> torch.Tensor:
        r = self.structure.resource
        macs = r(theta, phi) / self.b0
        params = r(theta, phi, weights="params") / self.p0
        return self.flops_w * macs + (1 - self.flops_w) * params

    def penalty(self, ctx: TrainContext) -> torch.Tensor | None:
        if self.fixed is not None:
            return None
        theta = {k: v * self.alive[k] for k, v in self.theta.items()}
        if self.auto:  # C's value is unchanged, its gradient on group g's theta is weights[g] times
            theta = {k: _scale_grad(v, self.weights[k]) for k, v in theta.items()}
        phi = {k: v * self.alive[k] for k, v in self.phi.items()}
        penalty = self.strength * knob_split(self.cost, theta, phi, self.unit_w)
        if self.auto and self.steps < self.weight_steps:  # the loop's backward sums both: keep the cost's part
            self.cost_grads = torch.autograd.grad(penalty, self.params, retain_graph=True, allow_unused=True)
        return penalty.float().to(ctx.device)

    def observe_loss_slopes(self) -> None:
        """Sum, per parameter, of the loss's slope (the step's gradient less the cost's)."""
        for key, p, cg in zip([*self.theta, *self.phi], self.params, self.cost_grads or [None] * len(self.params)):
            g = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            if cg is not None:
                g = g - cg.to(g.dtype)
            self.loss_slope[key] = self.loss_slope.get(key, torch.zeros_like(p)) + g
        self.cost_grads = None

    def group_weights(self) -> dict[str, float]:
        """unit_weights 'auto': group g's weight is r_g / r_bar, r_g = RMS over its undecided units of
        the loss's mean slope on theta (measured over the first weight_steps) per unit of C's slope
        (the unit's exact cost share, coupled to its neighbours), r_bar the geometric mean of r_g
        weighted by the groups' cost; clipped to [1/weight_clip, weight_clip]. A unit then feels the
        cost in proportion to its own group's loss scale (Molchanov et al. 2017 normalize Taylor
        scores per layer for the same reason), so groups of very different sizes and
        sensitivities decide at similar paces. Residual layers keep weight 1 (a single parameter
        normalized by its own scale would carry no information; --layer-vs-unit weighs them)."""
        with torch.enable_grad():
            theta = {k: (v * self.alive[k]).detach().requires_grad_(True) for k, v in self.theta.items()}
            phi = {k: (v * self.alive[k]).detach() for k, v in self.phi.items()}
            grads = torch.autograd.grad(self.cost(theta, phi), list(theta.values()), allow_unused=True)
        ratio, share = {}, {}
        for g, cg in zip(theta, grads):
            live = self.alive[g] & ~self.settled[g]
            if cg is None or not bool(live.any()) or g not in self.loss_slope:
                continue
            cost = cg.detach().abs()[live].double()
            slope = (self.loss_slope[g][live] / max(self.weight_steps, 1)).double()
            if float(cost.mean()) <= 0:
                continue
            ratio[g], share[g] = float(slope.pow(2).mean().sqrt() / cost.mean()), float(cost.sum())
        weights = {g: 1.0 for g in self.theta}
        positive = {g: r for g, r in ratio.items() if r > 0}
        if positive:
            total = sum(share[g] for g in positive)
            log_bar = sum(share[g] * math.log(r) for g, r in positive.items()) / max(total, 1e-300)
            for g, r in ratio.items():
                w = r / math.exp(log_bar) if r > 0 else 0.0
                weights[g] = min(max(w, 1 / self.weight_clip), self.weight_clip)
        return weights

    def after_step(self, ctx: TrainContext) -> None:
        self.noise = {}
        if self.fixed is not None:
            return
        self.structure.average_grads(self.params)
        if self.auto and self.steps < self.weight_steps:
            self.observe_loss_slopes()
            if self.steps + 1 == self.weight_steps:
                self.weights = self.group_weights()
                log.info("bernoulli: unit weights %s", ", ".join(f"{g}: {w:.3g}" for g, w in self.weights.items()))
        settling = self.settling()
        if settling:  # the objective's average slope per parameter (see settling)
            for key, p in [*self.theta.items(), *self.phi.items()]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                self.slope[key] = self.settle_beta * self.slope.get(key, torch.zeros_like(p)) + (1 - self.settle_beta) * g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if settling:
            with torch.no_grad():
                for key, p in [*self.theta.items(), *self.phi.items()]:
                    p.sub_(self.settle_step * torch.sign(self.slope[key]) * (self.alive[key] & ~self.settled[key]))
        # with a MAC target, nothing more dies once the surviving structures are at the target:
        # removal is permanent, so an overshoot could not be undone at rounding
        reaped = self.target is None or self.hard_macs() * self.b0 > self.target
        locking = self.locking()
        with torch.no_grad():
            for key, p in [*self.theta.items(), *self.phi.items()]:
                p.clamp_(0 if reaped else self.eps, 1)
                dead = self.alive[key] & (p < self.eps)
                if key in self.theta and bool(dead.any()) and int((self.alive[key] & ~dead).sum()) == 0:
                    dead[torch.argmax(p * self.alive[key])] = False  # a group keeps its last unit
                if key in self.phi and bool(dead) and self.target is not None and self.guard_branches:
                    # a residual layer is a large block that rounding cannot bring back (compaction
                    # cuts it): it stays (at eps) if without it the rounding could not reach the band
                    rest = [b for b in self.phi if b != key and not bool(self.alive[b])] + [key]
                    if self.too_small_without(rest):
                        dead = torch.zeros_like(dead)
                        p.clamp_(min=self.eps)
                self.alive[key] &= ~dead
                if locking:
                    self.settled[key] |= p >= self.lock  # at 1 a structure becomes plain for good
                p.mul_(self.alive[key])
                p.masked_fill_(self.settled[key] & self.alive[key], 1.0)
            expected = float(self.structure.resource(self.theta, self.phi)) / self.b0
        self.steps += 1
        self.min_expected = min(self.min_expected, expected)
        level = self.level()
        if level is not None:  # integral control of log(strength) on the expected MACs
            self.strength *= math.exp(self.gain * (expected - level) / level)
        ctx.metrics.update(macs_expected=expected, strength=self.strength, macs_expected_min=self.min_expected,
                           **({} if level is None else {"macs_level": level}))

    def settling(self) -> bool:
        """The settle phase (the last ``settle_share`` of the pruning steps, after the pace): E[L]
        and C are affine in each theta_j (the others fixed), so the objective's minimum over
        [0, 1] is at 0 or 1 by the sign of its slope. Adam's normalized steps on a noisy slope of
        about 0 leave the marginal parameters in between; here each undecided parameter also
        takes a step of ``settle_step`` against the sign of its slope's moving average (decay
        ``settle_beta``), sized to cross [0, 1] ``settle_rate`` times within the phase."""
        return self.settle_step > 0 and self.steps >= self.settle_from

    def locking(self) -> bool:
        """Whether a structure at ``lock`` becomes plain now: without a target always; with one,
        once the controller's level has reached the target (``lock_after_pace``). theta starts
        near the lock (0.99 -> 0.998 on the resnet sample), so one step of the loss's pull would
        lock a unit for good before the cost has acted."""
        return self.target is None or not self.lock_after_pace or self.steps >= self.pace_steps

    def level(self) -> float | None:
        """The MACs fraction the strength controller aims at after ``self.steps`` steps: from the
        start's expected MACs down to the target, linearly over ``pace_steps`` (None: no target)."""
        if self.target is None:
            return None
        final = self.target / self.b0
        share = 1.0 if self.pace_steps <= 0 else min(1.0, self.steps / self.pace_steps)
        return max(final, self.start_macs - (self.start_macs - final) * share)

    def hard_macs(self) -> float:
        dropped = [b for b in self.phi if not bool(self.alive[b])]
        return self.structure.resource.hard({g: self.alive[g] for g in self.theta}, dropped) / self.b0

    def end_epoch(self, ctx: TrainContext) -> None:
        ctx.metrics.pop("compact_seconds", None)  # only in the row of an epoch that compacted
        self.min_expected = float("inf")  # macs_expected_min: the lowest expected MACs within each epoch
        self.epoch_macs.append(self.hard_macs())
        self.trained_macs.append((self.compaction.macs if self.compaction else self.b0) / self.b0)
        ctx.metrics.update(macs_frac=self.epoch_macs[-1], macs_trained=self.trained_macs[-1],
                           removed_units=self.removed_units(),
                           removed_layers=sum(not bool(self.alive[b]) for b in self.phi))
        if self.fixed is None and ctx.epoch + 1 >= self.prune_epochs:
            self.round(ctx)
        if self.compacting and ctx.epoch + 1 < self.total_epochs(ctx):
            self.compact(ctx)

    def compact(self, ctx: TrainContext) -> bool:
        """Rebuild the trained model without the structures removed since the last time, if they
        are worth ``min_saving`` of its MACs; see the module docstring."""
        c, started = self.compaction, time.perf_counter()
        dropped = [b for b in self.phi if b not in c.dropped and not bool(self.alive[b])]
        alive = {g: self.alive[g].cpu().numpy() for g in self.theta}
        if self.target is not None and self.fixed is None:  # rounding may fill the target with dead
            alive = {g: np.ones_like(a) for g, a in alive.items()}  # units: until then only layers go
        keep = c.keep(ctx.analysis, alive, dropped, self.structure.groups, self.multiple if self.fixed is None else 1)
        kept = {g: torch.zeros(n, dtype=torch.bool) for g, n in self.structure.groups.items()}
        for g, k in keep.items():
            kept[g][torch.from_numpy(c.units[g][k])] = True
        after = self.structure.resource.hard(kept, [*c.dropped, *dropped])
        if after > (1 - self.min_saving) * c.macs:
            return False
        try:
            with torch.random.fork_rng(devices=[]):  # building modules draws from torch's global RNG
                candidate = c.shrink(ctx, keep, dropped, self.current_bank.bypassed)
            branches = [b for b in self.phi if b not in c.dropped and b not in dropped]
            bank = c.install_gates(candidate, branches, self._gate, ctx.device)
            self.noise = self.sample_noise(torch.Generator().manual_seed(ctx.epoch))  # one sample for both
            try:
                mismatch = same_outputs(ctx.model, candidate.imported.module, ctx.imported.sample_inputs(), ctx.device)
            finally:
                self.noise = {}
            if mismatch:
                raise CompactionError(mismatch)
        except OnnxPruneError as exc:  # never expected; training goes on with the model it has
            log.warning("bernoulli: compaction disabled for this run: %s", exc)
            self.compacting = False
            return False
        macs = c.macs
        ctx.state_map = c.commit(ctx, candidate, dropped)
        self.current_bank = bank
        ctx.metrics.update(compact_seconds=time.perf_counter() - started)
        log.info("bernoulli: compacted the trained model from %.3f to %.3f of the original MACs in %.2fs",
                 macs / self.b0, c.macs / self.b0, ctx.metrics["compact_seconds"])
        return True

    def removed_units(self) -> int:
        return sum(int((~self.alive[g]).sum()) for g in self.theta)

    def round(self, ctx: TrainContext) -> None:
        """Round every parameter to 0/1 (enforcing --target-macs if set) and freeze the gates."""
        with torch.no_grad():
            # decided by training: removed (theta 0) or plain (theta 1) before any rounding
            # (a parameter held at eps, where removal stops once the survivors fit the target, is at 0;
            # the units of a removed residual layer go with it: their gradients are 0 from then on)
            gone = self.groups_inside([b for b in self.phi if not bool(self.alive[b])])
            decided = sum(int((~self.alive[k] | self.settled[k] | (self._param(k) <= self.eps)).sum()) if k not in gone
                          else int(self._param(k).numel()) for k in [*self.theta, *self.phi])
            self.at_floor = sum(int((self.alive[k] & ~self.settled[k] & (self._param(k) <= self.eps)).sum())
                                for k in [*self.theta, *self.phi])
            total = sum(int(p.numel()) for p in self.params)
            undecided = total - decided
            self.decided_fraction = decided / max(total, 1)
            self.alive_before = {b: self.alive[b].clone() for b in self.phi}
            for b, p in self.phi.items():
                self.alive[b] &= p >= 0.5
            dropped = [b for b in self.phi if not bool(self.alive[b])]
            # removed units have theta = 0 and rank last: they come back (with their weights as
            # removed) only to round a layer up to the channel multiple, or, with a target, when
            # the survivors are under it (removals in one step can overshoot it)
            if self.target is None:  # theta >= 1/2, counts rounded to the channel multiple
                keep = {g: self.alive[g] & (self.theta[g] >= 0.5) for g in self.theta}
                for g in keep:
                    if not bool(keep[g].any()):
                        keep[g][torch.argmax(self.theta[g])] = True
                masks = round_counts(self.theta, keep, self.structure.resource.multiples(self.multiple), self.available)
            else:  # the target sets the size: units ranked by theta, kept until the MACs meet it
                masks = self.select(dropped)
                now = self.structure.resource.hard(masks, dropped)
                # under the band, branches that rounding dropped come back (highest phi first)
                # when the selection with them lands closer to the target
                for b in sorted((b for b in dropped if bool(self.alive_before[b])), key=lambda b: -float(self.phi[b])):
                    if now >= (1 - self.band) * self.target:
                        break
                    trial = [d for d in dropped if d != b]
                    candidate = self.select(trial)
                    macs = self.structure.resource.hard(candidate, trial)
                    if now < macs <= self.target:
                        dropped, masks, now, self.alive[b] = trial, candidate, macs, torch.ones_like(self.alive[b])
            for g in self.theta:
                self.alive[g] = masks[g].to(self.alive[g].device)
            for key, p in [*self.theta.items(), *self.phi.items()]:
                p.copy_(self.alive[key].to(p.dtype))
        self.fixed = {k: self.alive[k].float() for k in [*self.theta, *self.phi]}
        self.undecided = undecided
        ctx.metrics["decided_before_rounding"] = self.decided_fraction
        self.recalibrate(ctx)
        log.info("bernoulli: rounded (%d parameters were strictly between eps and 1-eps); MACs %.3f",
                 undecided, self.hard_macs())

    def groups_inside(self, dropped: list[str]) -> set[str]:
        """The unit groups whose every MAC term lies inside one of the ``dropped`` residual layers."""
        r = self.structure.resource
        if not dropped or not hasattr(r, "brs"):
            return set()
        index = {b: i for i, b in enumerate(r.branch_ids)}
        ids = [index[b] for b in dropped if b in index]
        if not ids:
            return set()
        inside = torch.isin(r.brs, torch.tensor(ids, dtype=r.brs.dtype)).any(dim=1)
        out, at = set(), 0
        for g in r.group_ids:
            terms = [side.rows[(side.cols >= at) & (side.cols < at + r.sizes[g])] for side in (r.ins, r.outs)]
            terms = torch.cat(terms).unique()
            if len(terms) and bool(inside[terms].all()):
                out.add(g)
            at += r.sizes[g]
        return out

    def too_small_without(self, dropped: list[str]) -> bool:
        """Whether the rounding, with ``dropped`` residual layers gone, stays under the band (a
        selection per set of dropped layers and removed units, remembered: a refused layer asks
        again at every step it sits at eps)."""
        key = (tuple(sorted(dropped)), self.removed_units())
        if key not in self.guard_memo:
            self.guard_memo[key] = self.structure.resource.hard(self.select(dropped), dropped) < (
                (1 - self.band) * self.target)
        return self.guard_memo[key]

    def select(self, dropped: list[str]) -> dict[str, torch.Tensor]:
        """With --target-macs: units ranked by theta, kept until the MACs meet the target
        (``select_to_budget``), then, since one block of a small layer is a large share of the
        model, block moves (swaps included) into the band just under the target (``refine_to_band``)."""
        r = self.structure.resource
        masks = select_to_budget(self.theta, r, self.target, dropped, self.multiple, self.available)
        if self.multiple > 1 and not hasattr(r, "round_widths"):
            masks = refine_to_band(self.theta, r, self.target, masks, dropped, self.multiple, self.available,
                                   band=self.band)
        return masks

    def recalibrate(self, ctx: TrainContext) -> None:
        """Activation statistics of the kept channels back to the original's (:mod:`recalibrate`):
        the units were trained under samples that dropped some of them, the rounded network
        drops none of the kept ones."""
        recalibrate_to_teacher(ctx, self.teacher)
        self.teacher = None  # done once; free the copy

    @property
    def available(self) -> dict[str, torch.Tensor] | None:
        """Units still in the trained model: rounding cannot bring back what compaction cut."""
        c = self.compaction
        return c.available(self.structure.groups) if c is not None and c.active else None

    def finalize(self, ctx: TrainContext):
        if self.fixed is None:
            self.round(ctx)
        if self.compaction is not None:
            self.compaction.restore(ctx)  # the plan and export refer to the original graph
        self.structure.bake(ctx.model)
        dropped = [b for b in self.phi if not bool(self.alive[b])]
        return self.structure.plan({g: self.alive[g] for g in self.theta}, dropped, meta={
            "method": self.name, "strength": self.strength, "original_macs": self.b0,
            "predicted_macs": self.hard_macs() * self.b0, "removed_units": self.removed_units(),
            "removed_layers": len(dropped), "undecided_at_rounding": self.undecided,
            "decided_before_rounding": self.decided_fraction, "held_at_eps": self.at_floor, "theta_start": self.init,
            "theta_start_probe": self.init_probe, "lock": self.lock,
            "unit_weights": {g: round(w, 4) for g, w in self.weights.items()},
            "macs_per_epoch": self.epoch_macs, "trained_macs_per_epoch": self.trained_macs})


def _scale_grad(v: torch.Tensor, w: float) -> torch.Tensor:
    """``v`` in value, ``w`` times its gradient."""
    return v if w == 1.0 else w * v + (1 - w) * v.detach()


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
