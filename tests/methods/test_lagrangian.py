"""Lagrangian channel pruning: the taper controller, constraint tracking, the multiplier, the
exported model's MACs, the trail, and invariance to the weights' per-layer scale."""

from __future__ import annotations

import statistics

import onnx
import pytest
from onnx import numpy_helper

from onnxprune.methods._support.channel_baselines import MagnitudeChannels, UniformChannels
from onnxprune.methods.lagrangian import Lagrangian, Taper
from tests.support.structured import SAMPLES, run


def test_taper_reaches_target_within_its_steps_and_adapts_its_rate():
    # a plant that tracks the budget perfectly: the rate grows after warm-up, and brakes near the end
    taper = Taper(start=1.0, target=0.3, steps=200)
    budgets = [taper.step(0.0) for _ in range(200)]
    assert budgets[-1] == pytest.approx(0.3) and min(budgets) >= 0.3
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert budgets.index(0.3) < 150  # faster than the nominal schedule while the constraint tracks
    # a plant that lags by 5% of B0: the rate falls to the floor, which still ends the taper in time
    lagging = Taper(start=1.0, target=0.3, steps=200)
    budgets = [lagging.step(0.05) for _ in range(200)]
    assert lagging.rate < 0.01 * lagging.nominal and budgets[-1] == pytest.approx(0.3)
    assert budgets[100] > 0.3 + 0.25 * 0.7  # slower than when tracking


def test_the_s_floor_is_slow_after_the_warm_up_and_near_the_target():
    """With the gates lagging throughout (h = 5% of B0) the floor alone moves the budget. The
    straight floor moves it by the same share every step, from the warm-up's end to the last step;
    the S-curve (the method's default) starts and ends slowly and still reaches the target at the
    last step (model (b): max |h| 3.5 -> 2.0% of B0 just after the warm-up)."""
    moves = {}
    for shape in (False, True):
        taper = Taper(start=1.0, target=0.3, steps=100, s_floor=shape)
        budgets = [1.0] + [taper.step(0.05) for _ in range(100)]
        assert budgets[-1] == pytest.approx(0.3) and budgets[-3] > 0.3  # at the last step or the one before
        moves[shape] = [m for m in (a - b for a, b in zip(budgets, budgets[1:])) if m > 0]
    straight, curve = moves[False], moves[True]
    assert max(straight) < 1.05 * min(straight)  # 0.7 / 90 a step
    assert curve[0] < 0.1 * straight[0] and curve[-1] < 0.1 * straight[-1]
    assert max(curve) > 1.4 * straight[len(straight) // 2]  # faster in the middle (pi / 2 x)
    assert Lagrangian.taper_s_floor


@pytest.fixture(scope="module")
def mlp_half(tmp_path_factory):
    trail = tmp_path_factory.mktemp("trail")
    method = Lagrangian(target_macs="0.5", trail=str(trail), channel_multiple=1)
    # 9 epochs as in the benchmarks (a 4-epoch, 92-step taper); at 6 (a 69-step taper) the damping's
    # median share was 0.51, |h| 1.4% as the step saw it and 2.3% after it
    return method, run("mlp", method, epochs=9), trail


def test_constraint_tracks_the_taper_and_the_multiplier_binds(mlp_half):
    """|R - B| / B0 within 2% after the warm-up, both as the step's penalty saw it (gates and budget
    of the same step) and after the step against the budget it aimed at. lam rises from 0 over the
    warm-up and stays positive while the budget falls: the constraint binds. (It does not keep
    rising: once it carries the constraint it follows the loss's price for the MACs, which falls as
    beta anneals and the gates grow sensitive; the steady rise under the earlier rho 5000 was the
    integral of the damping term's lag.)"""
    method, result, _ = mlp_half
    trace = method.trace
    warm = method.taper.warmup
    for key in ("h_step", "h"):
        assert max(abs(r[key]) for r in trace[warm:method.taper.steps]) < 0.02, key
    binding = [r for r in trace[warm:] if r["budget"] > method.target / method.b0 + 1e-9]
    assert trace[warm]["lam"] > 0 and statistics.median(r["lam"] for r in binding) > 0
    assert trace[-1]["budget"] == pytest.approx(0.5, abs=1e-9)


def _after_warmup(method: Lagrangian) -> list[dict]:
    """The taper's steps after its warm-up (the settle phase after the taper holds the budget)."""
    return method.trace[method.taper.warmup:method.taper.steps]


def test_the_multiplier_carries_the_constraint_once_tracking():
    """Damped multiplier method: after the warm-up the force on the scores per unit of dh/ds,
    lam + rho*h, is mostly the multiplier's. The damping's share rho|h| / (|lam| + rho|h|) has a
    median under 0.5 and |lam h| outweighs rho/2 h^2 on most steps. MLP at 25%, 6 epochs: median
    0.12 (at the earlier default rho 5000, eta 2, beta1 0.9: 0.96, a quadratic penalty). Not met
    everywhere: the MLP at 50% with distillation alone (this harness) has 0.51-0.56
    (docs/method-lagrangian.md)."""
    method = Lagrangian(target_macs="0.25", channel_multiple=1)
    run("mlp", method, epochs=6)
    window = _after_warmup(method)
    shares = [abs(r["damping_force"]) / max(abs(r["multiplier_force"]) + abs(r["damping_force"]), 1e-12)
              for r in window]
    assert statistics.median(shares) < 0.5, statistics.median(shares)
    # loss terms: lam*h against rho/2*h^2 (force lam against rho*h: the terms' ratio is twice as kind)
    carried = [abs(r["multiplier_force"]) > 0.5 * abs(r["damping_force"]) for r in window]
    assert sum(carried) > 0.75 * len(carried)


@pytest.mark.xfail(strict=True, reason="not met: a 16-step taper lags by 4-11% of B0 on the samples; from 1 to "
                   "0.25 in 16 steps the budget moves 4.7% of B0 a step, so h at the step within 2% needs the gates "
                   "to lead it by >= 2.7% (docs/method-lagrangian.md, 'Who carries the constraint', causes)")
def test_constraint_tracks_a_short_taper_within_two_percent():
    """16 steps (1,024 images, batch 64, a 1-epoch taper): |R - B| / B0 as the step's penalty sees
    it stays within 2% after the warm-up (3 steps). Measured on the MLP at 25% of the MACs: 4.7%
    (rho 5000 / eta 2 with the same taper: 8.4%); strict, so it reports when it starts to pass."""
    method = Lagrangian(target_macs="0.25", taper_epochs=1, channel_multiple=1)
    run("mlp", method, epochs=3, n_train=1024)
    assert method.taper.steps == 16
    window = _after_warmup(method)
    assert max(abs(r["h_step"]) for r in window) < 0.02, [round(r["h_step"], 4) for r in window]


def test_history_logs_the_multiplier_the_constraint_and_both_force_terms(mlp_half):
    """Every epoch before the selection is fixed has lam, h, the mean |lam * h| and rho/2 * h^2
    (the loss terms) and the mean forces |lam| and rho|h| on the scores, computed from the
    per-step trace; the damping's share of the force is what docs/method-lagrangian.md measures
    (at the earlier rho 5000 the damping carried the constraint, share 0.94-0.97)."""
    method, result, _ = mlp_half
    rows = [r for r in result["ctx"].history if "lagrange_term" in r]
    assert len(rows) == method.taper_epochs + method.settle_epochs
    steps = result["ctx"].steps_per_epoch
    for epoch, row in enumerate(rows):
        assert {"lam", "h", "lagrange_term", "damping_term", "multiplier_force", "damping_force",
                "damping_share"} <= set(row)
        trace = method.trace[epoch * steps:(epoch + 1) * steps]
        assert row["multiplier_force"] == pytest.approx(sum(abs(r["multiplier_force"]) for r in trace) / len(trace))
        assert row["damping_force"] == pytest.approx(sum(abs(r["damping_force"]) for r in trace) / len(trace))
    taper = [r["lam"] for r in rows[:method.taper_epochs]]  # risen from 0, positive while the budget falls
    assert taper[0] > 0 and statistics.median(taper) > 0, taper
    assert "lagrange_term" not in result["ctx"].history[-1]  # fine-tune epochs: no constraint


def test_exported_model_meets_the_target_within_two_percent(mlp_half):
    method, result, _ = mlp_half
    assert abs(result["macs"] / (0.5 * result["macs0"]) - 1) < 0.02
    assert result["plan"].kept and result["accuracy"] > 0.9


def test_default_rounds_kept_channels_to_multiples_of_eight():
    """At the default --channel-multiple 8 the MACs stay at or under the target, within one
    8-channel block of it (coarser than 2% on the MLP: one block of fc1 is 2.4% of its MACs)."""
    method = Lagrangian(target_macs="0.5")
    result = run("mlp", method, epochs=4, n_train=512)
    assert all(len(kept) % 8 == 0 for kept in result["plan"].kept.values())
    assert 0.5 * 0.95 < result["macs"] / result["macs0"] <= 0.5


def test_trail_writes_smaller_models_along_the_taper(mlp_half):
    method, _, trail = mlp_half
    files = sorted(trail.glob("macs_*.onnx"), reverse=True)
    start = method.trace[0]["budget"]  # the taper starts at R(g(0)) < B0
    levels = [round(1 - 0.1 * k, 1) for k in range(1, 6) if 1 - 0.1 * k < start]
    assert [f.name for f in files] == [f"macs_{round(100 * v):03d}.onnx" for v in levels]
    macs = [int(line.split("|")[3]) for line in (trail / "trail.md").read_text().splitlines()[2:]]
    assert len(macs) == len(files) and macs == sorted(macs, reverse=True)
    for f in files:
        onnx.checker.check_model(onnx.load(str(f)), full_check=True)


def _rescaled_mlp(a: float) -> onnx.ModelProto:
    """fc1 (weight, bias) * a and fc2's weight / a: the same function through the ReLU."""
    model = onnx.load(str(SAMPLES / "mlp.onnx"))
    for init in model.graph.initializer:
        factor = {"fc1.weight": a, "fc1.bias": a, "fc2.weight": 1 / a}.get(init.name)
        if factor is not None:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    return model


def test_allocation_ignores_the_weights_scale_while_magnitude_does_not():
    counts = {}
    for a in (1.0, 10.0):
        # the weights barely move (lr 1e-7): the allocation is the gates' alone
        method = Lagrangian(target_macs="0.5", channel_multiple=1)
        run("mlp", method, epochs=3, lr=1e-7, original=_rescaled_mlp(a), n_train=512)
        counts[a] = {g: int(m.sum()) for g, m in method.masks.items()}
        magnitude = MagnitudeChannels(target_macs="0.5", channel_multiple=1)
        run("mlp", magnitude, epochs=1, lr=1e-7, original=_rescaled_mlp(a), n_train=64)
        counts[a, "magnitude"] = {g: int(m.sum()) for g, m in magnitude.masks.items()}
    # invariant in exact arithmetic; float rounding in the gates' Adam steps moves a few channels
    # (measured 10 of 300 in fc1, 3 of 100 in fc2); magnitude's allocation moves by 144 and 72
    sizes = {"fc1.weight": 300, "fc2.weight": 100}
    assert all(abs(counts[1.0][g] - counts[10.0][g]) <= 0.05 * sizes[g] for g in sizes), counts
    assert counts[1.0, "magnitude"] != counts[10.0, "magnitude"], counts


def test_weights_learning_rate_times_ten_changes_the_allocation_little():
    counts = []
    for lr in (1e-3, 1e-2):
        method = Lagrangian(target_macs="0.5", channel_multiple=1)
        run("mlp", method, epochs=4, lr=lr, n_train=768)
        counts.append({g: int(m.sum()) for g, m in method.masks.items()})
    sizes = {"fc1.weight": 300, "fc2.weight": 100}
    assert all(abs(counts[0][g] - counts[1][g]) <= 0.1 * sizes[g] for g in sizes), counts


def test_keeps_up_with_uniform_channel_pruning_at_equal_macs_and_fine_tuning():
    """The MLP sample is an easy case for uniform pruning (benchmarks/structured_table.py has the
    CNN comparison): here the check is that the learned allocation, after its taper, is not
    worse than uniform channels fine-tuned for as many epochs as its own settle and fine-tune
    phases (6 epochs: 3 taper, 1 settle, 2 fine-tune)."""
    lagrangian = run("mlp", Lagrangian(target_macs="0.25", channel_multiple=1), epochs=6)
    uniform = run("mlp", UniformChannels(target_macs="0.25", channel_multiple=1), epochs=3)
    for result in (lagrangian, uniform):
        assert abs(result["macs"] / (0.25 * result["macs0"]) - 1) < 0.02
    assert lagrangian["accuracy"] >= uniform["accuracy"] - 0.02, (lagrangian["accuracy"], uniform["accuracy"])


def test_beats_uniform_channel_pruning_on_the_mobilenet_sample_at_a_quarter_of_the_macs():
    """The CNN case (benchmarks/structured_table.py, 4 seeds: 98.1% vs 95.2%): both train 9
    epochs, uniform fine-tunes all of them with its choice, the Lagrangian tapers for 4 of them;
    uniform lands under the target (rounded to 8 channels), so it is not given fewer channels."""
    lagrangian = run("mobilenet", Lagrangian(target_macs="0.25"), epochs=9)
    uniform = run("mobilenet", UniformChannels(target_macs="0.25"), epochs=9)
    assert uniform["macs"] <= lagrangian["macs"] <= 0.25 * lagrangian["macs0"]
    assert lagrangian["accuracy"] >= uniform["accuracy"] + 0.01, (lagrangian["accuracy"], uniform["accuracy"])
