"""Automatic learning rate for the weights: the largest rate that leaves the original intact.

Why: Adam normalizes the gradient, so its first steps have size ~lr on every weight whatever the
gradient's size. At the start of a prune the student *is* the teacher, the distillation gradient
is ~0 and noisy, and Adam turns that noise into full-size steps. On the 8x8 digits samples lr
1e-3 is harmless; on a real pretrained MobileNetV2 it destroys the network with nothing pruned
(top-1 agreement with itself 15.6% after one epoch; 1e-5 keeps 95%: docs/real-models.md, cause 3).

The probe (used when no ``--lr`` is given): for each rate of a short descending geometric grid,
``GRID = 1e-3, 3e-4, 1e-4, 3e-5, 1e-5``, a copy of the *unpruned* model takes ``steps`` optimizer
steps on the distillation loss alone (labels ignored: with labels the loss is meant to move), and
the distillation loss on a fixed set of calibration inputs (eval mode) is measured before (L0)
and after (Lk). The scale of "destroyed" is the loss of an input-blind predictor, Lref: every
output replaced by its mean over the probe inputs (what the collapsed models of issue 11 output).
A rate is accepted when

    Lk - L0 <= tol * (Lref - L0),        tol = 0.05,

i.e. the few steps lost at most 5% of the way from the original to a constant function. The
share is noisy at a rate near the limit: the start's gradient is float rounding noise, which
Adam turns into full-size steps, so the thread count changes it (model (a), lr 1e-4: 1.6% at one
torch thread, 2.2% at two; 3e-4: 11.7% / 20%; 1e-3: 60% / 88%). 5% sits between the rates that
keep a pretrained network and those that wreck it; the digits samples' 1e-3 is at 0.1-1.2%. The
first accepted rate of the grid is used; if none is, the smallest rate is, with a warning.
The copy is discarded and the random state restored, so a run with the probe's rate is
bit-identical to one given that rate with ``--lr``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

GRID = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
STEPS = 10
TOL = 0.05
PROBE_SAMPLES = 256


@dataclasses.dataclass
class ProbeResult:
    lr: float
    start_loss: float  # L0: the original's distillation loss on the probe inputs (~0)
    reference_loss: float  # Lref: the loss of an input-blind (mean-output) predictor
    trials: list[dict]  # per rate tried: lr, loss after the steps, fraction of (Lref - L0), accepted
    steps: int
    tol: float
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        tried = ", ".join(f"{t['lr']:g}: {t['loss']:.4g} ({100 * t['fraction']:.1f}%)" for t in self.trials)
        return (f"lr probe: chose {self.lr:g} (distillation loss after {self.steps} steps per rate, share of "
                f"the way to a constant output in brackets, limit {100 * self.tol:g}%; start {self.start_loss:.4g}, "
                f"constant output {self.reference_loss:.4g}): {tried}")


def probe_lr(model: torch.nn.Module, inputs, targets, loss_fn: Callable, make_optimizer: Callable,
             set_train_mode: Callable, batch_size: int, seed: int, device: torch.device,
             grid=GRID, steps: int = STEPS, tol: float = TOL) -> ProbeResult:
    """Probe ``grid`` (descending) on a copy of ``model``; see the module docstring.

    ``make_optimizer(model, lr)`` builds the run's optimizer over a copy; ``set_train_mode(model)``
    puts it in the run's training mode (BN frozen)."""
    started = time.perf_counter()
    n = len(inputs[0])
    generator = torch.Generator().manual_seed(seed * 7919 + 1)
    order = torch.randperm(n, generator=generator)
    # whole batches throughout: a model with a batch baked in runs only at batch_size
    held = order[: max(batch_size, min(PROBE_SAMPLES, n) // batch_size * batch_size)]
    x_eval = [x[held].to(device) for x in inputs]
    t_eval = [t[held].to(device) for t in targets]
    # the input-blind predictor: every output is its mean over the probe inputs
    constant = [t.float().mean(0, keepdim=True).expand_as(t).to(t.dtype) for t in t_eval]
    with torch.no_grad():
        reference = float(loss_fn(constant, t_eval, None))
    cycle = torch.cat([order, order])
    batches = [cycle[(i * batch_size) % n:][:batch_size] for i in range(steps)]
    start = None
    trials = []
    chosen = None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for lr in grid:
            trial = copy.deepcopy(model).to(device)
            if start is None:
                start = _eval_loss(trial, x_eval, t_eval, loss_fn, batch_size)
            optimizer = make_optimizer(trial, lr)
            set_train_mode(trial)
            finite = True
            for index in batches:
                outputs = _outputs(trial(*[x[index].to(device) for x in inputs]))
                loss = loss_fn(outputs, [t[index].to(device) for t in targets], None)
                if not math.isfinite(float(loss.detach())):
                    finite = False
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            after = _eval_loss(trial, x_eval, t_eval, loss_fn, batch_size) if finite else math.inf
            span = max(reference - start, 1e-12)
            fraction = (after - start) / span if math.isfinite(after) else math.inf
            accepted = fraction <= tol
            trials.append({"lr": lr, "loss": after, "fraction": fraction, "accepted": accepted})
            del trial, optimizer
            if accepted:
                chosen = lr
                break
    if chosen is None:
        chosen = grid[-1]
        log.warning("lr probe: no rate of %s kept the distillation loss within %g%% of the way to a constant "
                    "output; using %g", ", ".join(f"{g:g}" for g in grid), 100 * tol, chosen)
    return ProbeResult(chosen, float(start), reference, trials, steps, tol, time.perf_counter() - started)


def _outputs(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _eval_loss(model: torch.nn.Module, x_eval, t_eval, loss_fn, batch: int) -> float:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            total, count = 0.0, 0
            n = len(x_eval[0])
            for s in range(0, n, batch):  # in batches: memory stays that of one training batch
                out = _outputs(model(*[x[s:s + batch] for x in x_eval]))
                k = len(out[0])
                total += float(loss_fn(out, [t[s:s + batch] for t in t_eval], None)) * k
                count += k
            return total / max(count, 1)
    finally:
        for module, mode in modes.items():
            module.train(mode)
