"""Lagrangian channel pruning with a tapering MAC constraint (after arXiv 1812.07060).

Every prunable channel group G gets gates ``g = sigmoid(s / beta) / sigmoid(s0 / beta)`` (one per
channel, so every gate starts at exactly 1 and the network starts as the original), applied
where the group's outputs are scaled (see :mod:`onnxprune.methods._support.channel_gates`). The scores ``s`` are
separate from the weights and have their own Adam optimizer, so the pruning speed depends on
neither the weights' learning rate nor their per-layer scale (Adam's step is invariant to the
gradient's scale, and a gate's gradient is invariant to rescaling W1 by a and W2 by 1/a).

With ``R(g)`` the differentiable MAC count (:mod:`onnxprune.methods._support.resource`) and ``B(t)`` the
budget, the constraint ``h = (R(g) - B(t)) / B0 = 0`` enters the loss as ``lam * h + rho/2 * h^2``;
the weights descend on the task loss, ``s`` on the Lagrangian, and ``lam <- lam + eta * h``
(dual ascent: lam rises while the constraint binds). This is Platt and Barr's damped multiplier
method: the force on the scores is ``(lam + rho * h) * dh/ds``; lam, the integral of h, carries it
once tracking, and ``rho * h``, proportional to the error, damps the oscillation the integral
alone would have (a PI controller on the constraint). The scores' Adam has momentum beta1 0.5: its
lag (about 1 / (1 - beta1) steps) is inside that loop. The budget tapers from the current MACs
to the target, ``B(t+1) = B(t) - r(t) * B0``, with the controller in :class:`Taper`.

Phases: taper (``--taper-epochs``, default half the epochs: the budget reaches the target within
them), settle (``--settle-epochs``, default the first half of the remaining epochs: the budget holds at the target while beta anneals from
0.3 to 0.02, so the gates go to 0 or 1 under the constraint before the hard selection), then
fine-tune (the rest) with a fixed selection: channels
ranked by gate, the top ones kept until the MACs meet the target, kept gates frozen at their
value (folded into the weights at the end: the following scale/shift), dropped ones at 0.
The plan lists the kept channels; the passes remove the others physically.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import torch

from onnxprune.methods._support.channel_gates import GateBank, Structure
from onnxprune.methods._support.recalibrate import recalibrate_to_teacher
from onnxprune.methods._support.resource import parse_target, select_to_budget
from onnxprune.methods._support.training_bn import ReinsertedBatchNorm
from onnxprune.methods.base import PruningMethod, TrainContext, register
from onnxprune.methods.options import (
    MethodOptions,
    batchnorm_option,
    channel_multiple_option,
    gate_lr_option,
    latency_table_option,
    option,
    recalibrate_option,
    target_macs_option,
    trail_option,
)

log = logging.getLogger(__name__)


class Taper:
    """Budget schedule with an adaptive rate (per step, in MACs).

    Warm-up: over the first ``warmup`` steps (10% of the taper, at least 3) the rate ramps from 0
    towards the nominal rate (the one that would reach the target at 60% of the taper) while the
    gates follow or run ahead (h < tol/2), and holds while they lag, as the multiplier builds up. Then r grows by 5% per step while
    the constraint tracks (|h| < tol/2) and the loss is steady, shrinks by 30% when the gates
    lag (h > tol) or the loss jumped, and holds otherwise (gates ahead of the budget: slowing
    down would widen the gap); it stays between the rate that still reaches the target by the
    last taper step and 4x the nominal rate, and brakes near the target (at most 10% of the
    remaining gap per step).
    With ``s_floor`` (the method's default) the floor is a position bound on half a cosine from
    the budget at the warm-up's end to the target at the last step, slow at both ends.
    """

    def __init__(self, start: float, target: float, steps: int, b0: float | None = None, tol: float = 0.01,
                 warmup: float = 0.1, min_warmup: int = 3, max_rate: float | None = None,
                 grow_ahead: bool = False, smooth_ramp: bool = False, s_floor: bool = False) -> None:
        self.budget, self.target, self.b0, self.tol = start, target, b0 or start, tol
        # max_rate (share of B0 per step, None: 4x nominal only) caps the adaptive rate; the floor
        # (the rate that still ends the taper in time) overrides it. grow_ahead: the rate also
        # grows while the gates run ahead of the budget (h < -tol/2), not only while |h| < tol/2
        self.max_rate, self.grow_ahead = max_rate, grow_ahead
        # smooth_ramp: the warm-up's ramp rises by at most nominal / warmup per step, so a ramp
        # held back by a lag does not jump to the full rate when the gates catch up
        self.smooth_ramp = smooth_ramp
        # s_floor: the floor is a position bound on an S-curve (half a cosine) from the budget at
        # the warm-up's end to the target at the last step, instead of a straight line re-aimed
        # every step: slow where the multiplier is still building up and where the loss's price
        # climbs near the target, faster in between
        self.s_floor, self.floor_from = s_floor, None
        self.steps, self.t = max(steps, 1), 0
        # at least 3 steps (or the whole of a shorter taper): the multiplier starts at 0 and the
        # gates' Adam needs a few steps to answer it (16-step taper, 1-step warm-up: |h| 8-14%
        # at the first steps after it, the budget already down 8% of B0)
        self.warmup = min(max(min_warmup, int(warmup * self.steps)), self.steps)
        self.nominal = (start - target) / (0.6 * self.steps)
        self.rate = 0.0
        self.jumped = False
        # brake on the approach: at most this share of the remaining gap per step (0.2 left the
        # multiplier's momentum overshooting the target: MLP sample at 50%, R 2.7% of B0 under it)
        self.brake = 0.1

    def step(self, h: float) -> float:
        self.t += 1
        tol = self.tol * self.b0
        # only a lag (R > B) slows the budget: when the gates run ahead (momentum), slowing down
        # let them overshoot further (MLP sample, weights' lr 1e-2: R 2.0% of B0 under B)
        if h > tol or self.jumped:
            self.rate *= 0.7
        elif self.t <= self.warmup:
            # ramp only while the gates follow: at the start the gates' Adam momentum still
            # carries the loss's pull to open them (mobilenet sample: R rose for 3 steps), and a
            # blind ramp left R 4.9% of B0 behind at the end of a 9-step warm-up
            if h < tol / 2:  # following, or ahead: only a lag holds the ramp
                ramp = self.nominal * self.t / self.warmup
                if self.smooth_ramp:
                    ramp = min(ramp, self.rate + self.nominal / self.warmup)
                self.rate = max(self.rate, ramp)
        elif abs(h) < tol / 2 or (self.grow_ahead and h < 0):
            self.rate = min(self.rate * 1.05, 4 * self.nominal)
        if self.max_rate is not None:
            self.rate = min(self.rate, self.max_rate * self.b0)
        self.jumped = False
        gap = self.budget - self.target
        floor = gap / max(self.steps - self.t, 1) if self.t > self.warmup else 0.0
        if self.s_floor and self.t > self.warmup:
            if self.floor_from is None:
                self.floor_from = (self.budget, self.t - 1)
            start, t0 = self.floor_from
            tau = min(1.0, (self.t - t0) / max(self.steps - t0, 1))
            floor = max(0.0, self.budget - (self.target + (start - self.target) * (1 + math.cos(math.pi * tau)) / 2))
        # brake on the approach (at most 10% of the gap per step): an abrupt stop at full
        # speed overshoots the target while the gates still move
        speed = min(self.rate, max(self.brake * gap, 1e-3 * self.b0))
        self.budget = max(self.target, self.budget - max(speed, floor))
        return self.budget

    def loss_jump(self) -> None:
        self.jumped = True

    @property
    def done(self) -> bool:
        return self.budget <= self.target


@dataclasses.dataclass(frozen=True)
class LagrangianOptions(MethodOptions):
    method = "lagrangian"
    target_macs: str | None = target_macs_option()  # [default: 0.5]
    trail: str | None = trail_option()
    channel_multiple: int = channel_multiple_option()
    latency_table: str | None = latency_table_option()
    taper_epochs: int | None = option(None, "lagrangian: epochs within which the budget reaches the target "
                                            "[default: half of --epochs].", min=1)
    settle_epochs: int | None = option(None, "lagrangian: epochs after the taper with the budget held while the "
                                             "gates settle to 0/1 [default: half of the epochs after the taper].",
                                       min=0)
    gate_lr: float | None = gate_lr_option()
    recalibrate: bool = recalibrate_option()
    batchnorm: bool = batchnorm_option()
    dual_lr: float = option(50.0, "lagrangian: dual ascent rate eta of the multiplier (per step, h in units of B0).",
                            min=0, min_open=True)
    damping: float = option(200.0, "lagrangian: damping rho of the constraint (0 = pure Lagrangian; large "
                                   "= a quadratic penalty, the multiplier idle).",
                            min=0)


@register
class Lagrangian(PruningMethod):
    name = "lagrangian"
    help = "Channel pruning: gates under a tapering MAC budget (Lagrange multiplier, adaptive rate)."
    granularities = ("channel",)
    Options = LagrangianOptions
    # gate temperature g = sigmoid(s / beta), beta annealed over the taper (measured: docs/method-lagrangian.md,
    # "Measured choices")
    beta0, beta_end = 1.0, 0.3
    # scores start at s0 = 2, gates normalized to 1 there, not capped (docs/method-lagrangian.md, "Measured choices")
    s_init = 2.0
    # after the taper the budget holds while beta anneals on to 0.02 (docs/method-lagrangian.md, "Measured choices")
    beta_settle = 0.02
    # the scores' Adam momentum: beta1 0.5, not 0.9, as its lag is inside the constraint's loop
    # (docs/method-lagrangian.md, "Who carries the constraint")
    score_beta1 = 0.5
    # the taper's rate cap (share of B0 per step, None: 4x nominal) and growth while the gates run ahead
    taper_max_rate: float | None = None
    taper_grow_ahead = False
    taper_smooth_ramp = False
    # the taper's floor as an S-curve (Taper's s_floor): model (b) max |h| 3.5 -> 2.0% of B0, resnet
    # sample at 25% 4.5 -> 2.5% after the step (docs/method-lagrangian.md, "Who carries the constraint")
    taper_s_floor = True
    # the scores' Adam second-moment decay (0.999: one batch whose score gradient is far above its
    # running RMS moves a score by up to about 0.5 / sqrt(1 - beta2) = 16x the learning rate)
    score_beta2 = 0.999
    # dual step relative to the multiplier's size above dual_scale (None: the plain eta * h)
    dual_scale: float | None = None

    def setup(self, ctx: TrainContext) -> None:
        self.structure = Structure.from_context(ctx)
        if self.options.latency_table:  # the resource is the table's predicted latency
            from onnxprune.methods._support.latency_table import latency_resource

            self.structure.resource = latency_resource(self.structure, ctx, self.options.latency_table)
        res = self.structure.resource
        self.b0 = res.total_macs
        from onnxprune.methods._support.resource import smallest_reachable

        floor = smallest_reachable(res, self.options.channel_multiple)  # refused below it
        self.target = parse_target(self.options.target_macs, self.b0, default=0.5, floor=floor)
        self.multiple = self.options.channel_multiple
        self.scores = {gid: torch.full((size,), self.s_init, device=ctx.device, requires_grad=True)
                       for gid, size in self.structure.groups.items()}
        self.selection: dict[str, torch.Tensor] | None = None  # fixed gates after the taper
        self.bank = GateBank()
        self.teacher = copy.deepcopy(ctx.model) if self.options.recalibrate else None
        self.structure.install(ctx.model, self.bank)
        # created now so that the loop's optimizer holds their parameters; active from the freeze
        self.training_bn = ReinsertedBatchNorm(ctx) if self.options.batchnorm else None
        for gid in self.scores:
            self.bank.set(gid, lambda gid=gid: self._gate(gid))
        self.lam, self.h = 0.0, 0.0
        self._forces: list[tuple[float, float, float, float]] = []
        # rho 200, eta 50: the multiplier carries the force, the damping's median share 0.13-0.40
        # on the samples (docs/method-lagrangian.md, "Who carries the constraint")
        self.dual_lr = self.options.dual_lr
        self.rho = self.options.damping
        epochs = self.total_epochs(ctx)
        # half the epochs taper, the rest settles and fine-tunes (docs/method-lagrangian.md, "Measured choices")
        self.taper_epochs = min(self.options.taper_epochs or max(1, epochs // 2), epochs)
        settle = self.options.settle_epochs
        self.settle_epochs = min(int(settle), epochs - self.taper_epochs) if settle is not None else (epochs - self.taper_epochs) // 2
        self.settle_steps = self.settle_epochs * ctx.steps_per_epoch
        self.gate_lr = float(self.options.gate_lr or self.default_gate_lr(self.taper_epochs * ctx.steps_per_epoch))
        self.optimizer = torch.optim.Adam(self.scores.values(), lr=self.gate_lr, betas=(self.score_beta1, float(self.score_beta2)))
        start = float(self.resource_now().detach())
        self.taper = Taper(start, self.target, self.taper_epochs * ctx.steps_per_epoch, self.b0,
                           max_rate=self.taper_max_rate, grow_ahead=bool(self.taper_grow_ahead),
                           smooth_ramp=bool(self.taper_smooth_ramp), s_floor=bool(self.taper_s_floor))
        self.trace: list[dict[str, float]] = []
        self.trail = None
        if self.options.trail:
            from onnxprune.methods._support.trail import Trail

            self.trail = Trail(self.options.trail, self, ctx, start / self.b0, self.target / self.b0)
        log.info("lagrangian: %d groups, %.4g MACs, target %.4g", len(self.scores), self.b0, self.target)

    @staticmethod
    def default_gate_lr(taper_steps: int) -> float:
        """0.05, or more when the taper is short: Adam moves a score by at most about lr per step,
        and a gate must be able to travel from s = 2 to s = -2 (g = 0.001 at the taper's final
        beta 0.3) within the taper. torchvision mobilenet_v2 with 256 calibration images, batch
        32, a 4-epoch taper (28 steps): at 0.05 the scores could only fall 2.0 -> 0.6, all gates
        stayed at 0.87 in lockstep, the constraint never bound (R 0.76 of B0 against 0.5), and the
        final selection broke ties between equal scores by group order."""
        return max(0.05, 4.0 / max(taper_steps, 1))

    def total_epochs(self, ctx: TrainContext) -> int:
        taper = self.options.taper_epochs
        return max(ctx.epochs, int(taper) + 1) if taper else max(ctx.epochs, 2)

    def _gate(self, gid: str) -> torch.Tensor:
        if self.selection is not None:
            return self.selection[gid]
        beta = self.beta
        return torch.sigmoid(self.scores[gid] / beta) / torch.sigmoid(torch.tensor(self.s_init / beta))

    @property
    def beta(self) -> float:
        taper = getattr(self, "taper", None)
        if taper is None:
            return self.beta0
        if taper.t <= taper.steps:
            return self.beta0 * (self.beta_end / self.beta0) ** (taper.t / taper.steps)
        progress = min(1.0, (taper.t - taper.steps) / max(self.settle_steps, 1))
        return self.beta_end * (self.beta_settle / self.beta_end) ** progress

    def gates(self) -> dict[str, torch.Tensor]:
        return {gid: self._gate(gid) for gid in self.scores}

    def resource_now(self) -> torch.Tensor:
        return self.structure.resource(self.gates())

    def penalty(self, ctx: TrainContext) -> torch.Tensor | None:
        if self.selection is not None:
            return None
        h = (self.resource_now() - self.taper.budget) / self.b0
        self.h = float(h.detach())
        return (self.lam * h + 0.5 * self.rho * h * h).float().to(ctx.device)

    def after_step(self, ctx: TrainContext) -> None:
        if self.selection is not None:
            return
        self.structure.average_grads(self.scores.values())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # the two forces on the scores, per unit of dh/ds: the multiplier's lam and the damping's
        # rho * h (the loss terms lam * h and rho/2 * h^2), logged per epoch (see end_epoch)
        self._forces.append((self.lam, self.rho * self.h, self.lam * self.h, 0.5 * self.rho * self.h ** 2))
        gain = 1.0 if self.dual_scale is None else max(1.0, abs(self.lam) / self.dual_scale)
        self.lam += self.dual_lr * gain * self.h
        with torch.no_grad():
            macs = float(self.resource_now())
        record = {"step": ctx.step, "budget": self.taper.budget / self.b0, "macs": macs / self.b0,
                  # h: after the step, against the budget it aimed at; h_step: as the step's penalty saw it
                  "h": (macs - self.taper.budget) / self.b0, "h_step": self.h, "lam": self.lam,
                  "rate": self.taper.rate / self.b0,
                  "multiplier_force": self._forces[-1][0], "damping_force": self._forces[-1][1]}
        self.trace.append(record)
        self.taper.step(macs - self.taper.budget)
        ctx.metrics.update(macs_frac=record["macs"], budget=record["budget"], lam=self.lam)
        if self.trail is not None:
            self.trail.passed(self.taper.budget / self.b0)

    def end_epoch(self, ctx: TrainContext) -> None:
        if self._forces:  # this epoch's constraint forces (steps before the selection is fixed)
            import statistics

            lam, damp, lam_term, damp_term = zip(*self._forces)
            ctx.metrics.update(
                lam=self.lam, h=self.h, lagrange_term=statistics.fmean(abs(v) for v in lam_term),
                damping_term=statistics.fmean(damp_term), multiplier_force=statistics.fmean(abs(v) for v in lam),
                damping_force=statistics.fmean(abs(v) for v in damp),
                damping_share=statistics.median(abs(d) / max(abs(m) + abs(d), 1e-12) for m, d in zip(lam, damp)))
            self._forces = []
        else:
            for key in ("lagrange_term", "damping_term", "multiplier_force", "damping_force", "damping_share"):
                ctx.metrics.pop(key, None)
        loss = ctx.metrics.get("loss")
        if loss is not None and getattr(self, "_last_loss", None) is not None and loss > 1.5 * self._last_loss:
            self.taper.loss_jump()
        self._last_loss = loss
        if self.selection is None and ctx.epoch + 1 >= self.taper_epochs + self.settle_epochs:
            self.freeze(ctx)

    def freeze(self, ctx: TrainContext) -> None:
        """Fix the selection: top gates until the MACs meet the target; kept gates keep their value."""
        with torch.no_grad():
            gates = {gid: g.detach().clone() for gid, g in self.gates().items()}
            # rank by score, not by gate: at the settle's beta 0.02 most gates are exactly 0.0 or
            # 1.0 in float32, and ties would be broken by channel index
            scores = {gid: s.detach().clone() for gid, s in self.scores.items()}
            masks = select_to_budget(scores, self.structure.resource, self.target, multiple=self.multiple)
            self.selection = {gid: gates[gid] * masks[gid].to(gates[gid].device) for gid in gates}
        self.masks = masks
        self.recalibrate(ctx)
        self.start_batchnorm(ctx)
        macs = self.structure.resource.hard(masks)
        ctx.metrics["macs_frac"] = macs / self.b0
        log.info("lagrangian: selection fixed at %.4g MACs (%.2f%% of %.4g)", macs, 100 * macs / self.b0, self.b0)

    def recalibrate(self, ctx: TrainContext) -> None:
        """Activation statistics of the kept channels back to the original's (:mod:`recalibrate`)."""
        recalibrate_to_teacher(ctx, self.teacher)
        self.teacher = None  # done once; free the copy

    def start_batchnorm(self, ctx: TrainContext) -> None:
        """The fine-tuning with the selection fixed trains with BatchNorm (:mod:`training_bn`)."""
        if self.training_bn is not None:
            self.training_bn.start(ctx.model, ctx.calibration)

    def param_groups(self, ctx: TrainContext) -> list[dict]:
        return [{"params": self.training_bn.parameters()}] if self.training_bn is not None else []

    def finalize(self, ctx: TrainContext):
        if self.selection is None:
            self.freeze(ctx)
        if self.trail is not None:
            self.trail.write_table()
        self.structure.bake(ctx.model)
        if self.training_bn is not None:
            ctx.metrics["batchnorm_folded"] = self.training_bn.fold(ctx.model, ctx.calibration)
        return self.structure.plan(self.masks, meta={
            "method": self.name, "target_macs": self.target, "original_macs": self.b0,
            "predicted_macs": self.structure.resource.hard(self.masks), "lambda": self.lam})
