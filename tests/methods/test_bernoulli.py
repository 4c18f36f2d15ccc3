"""Bernoulli unit and residual-layer pruning: the estimator's sampling, the cost split of the
layer-vs-unit knob, and on the ResNet sample: whole blocks and many units removed, every
parameter in {0, 1}, MACs (expected and trained) falling per epoch, the pruned ONNX equal to the
gated torch model. Compaction itself: tests/methods/test_bernoulli_compaction.py."""

from __future__ import annotations

import pytest
import torch

from onnxprune.methods._support.resource import Resource, Term
from onnxprune.methods.bernoulli import Bernoulli, knob_split
from tests.support.structured import run


@pytest.fixture(scope="module")
def resnet_run():
    method = Bernoulli(strength=10.0)
    return method, run("resnet", method, epochs=8)


def test_removes_whole_residual_blocks_and_many_units(resnet_run):
    method, result = resnet_run
    branches = {b.id for b in result["analysis"].residual_branches}
    assert len(result["plan"].dropped_branches) >= 2 and set(result["plan"].dropped_branches) <= branches
    assert method.removed_units() >= 40  # of 336 gated units
    assert result["macs"] < 0.7 * result["macs0"] and result["accuracy"] > 0.95


def test_every_parameter_ends_at_zero_or_one(resnet_run):
    method, _ = resnet_run
    for p in method.params:
        assert bool(((p == 0) | (p == 1)).all())
    # the plan is the parameters: dropped branches are those at 0, kept units those at 1
    assert {b for b, p in method.phi.items() if float(p.detach()) == 0} == set(resnet_run[1]["plan"].dropped_branches)


def test_macs_fall_per_epoch(resnet_run):
    method, result = resnet_run
    macs = method.epoch_macs
    assert all(a >= b for a, b in zip(macs, macs[1:])) and macs[-1] < macs[0]
    assert macs[-1] == pytest.approx(result["macs"] / result["macs0"], rel=0.01)
    # the model actually trained shrinks too (compaction): the last epochs train the final size
    trained = [h["macs_trained"] for h in result["ctx"].history]
    assert all(a >= b for a, b in zip(trained, trained[1:])) and trained[0] == 1.0
    assert trained[-1] == pytest.approx(macs[-1], rel=0.01) and method.compaction.count >= 1
    # (run() already checked that onnxruntime on the pruned model equals the gated torch model)


def test_relaxed_sample_is_one_with_probability_theta():
    """xi = sigmoid((logit theta + logit u) / tau) > 1/2 exactly when u > 1 - theta."""
    torch.manual_seed(0)
    theta = torch.tensor([0.1, 0.5, 0.9])
    u = torch.rand(200_000, 3)
    xi = torch.sigmoid((torch.logit(theta) + torch.logit(u)) / Bernoulli.tau)
    torch.testing.assert_close((xi > 0.5).float().mean(0), theta, atol=5e-3, rtol=0)
    assert float(((xi < 0.1) | (xi > 0.9)).float().mean()) > 0.5  # most within 0.1 of 0 or 1


def test_layer_vs_unit_knob_shifts_the_cost_gradient():
    """a = 1 charges all of the cost to the layers (phi), a = 0 all to the units (theta); the
    gradients follow the exact expected cost's: dC/dtheta_c = phi / 4, dC/dphi = mean theta."""
    resource = Resource([Term(1.0, 1.0, inputs=(("g", 0, 4, 1),), branches=("b",))], {"g": 4}, ["b"])
    grads = {}
    for a in (0.0, 0.5, 1.0):
        theta = {"g": torch.full((4,), 0.8, requires_grad=True)}
        phi = {"b": torch.tensor(0.6, requires_grad=True)}
        knob_split(resource, theta, phi, 2 * (1 - a)).backward()
        grads[a] = (theta["g"].grad.tolist(), float(phi["b"].grad))
    assert grads[0.0] == (pytest.approx([2 * 0.6 / 4] * 4), 0.0)
    assert grads[1.0] == ([0.0] * 4, pytest.approx(2 * 0.8))
    assert grads[0.5] == (pytest.approx([0.6 / 4] * 4), pytest.approx(0.8))


def test_layer_vs_unit_knob_trades_removed_blocks_for_removed_units():
    removed = {}
    for a in (0.9, 0.1):
        method = Bernoulli(strength=10.0, layer_vs_unit=a)
        result = run("resnet", method, epochs=6, n_train=768)
        removed[a] = (len(result["plan"].dropped_branches), method.removed_units())
    assert removed[0.9][0] > removed[0.1][0] and removed[0.9][1] < removed[0.1][1], removed


@pytest.fixture(scope="module")
def mobilenet_quarter():
    method = Bernoulli(target_macs="0.25")
    return method, run("mobilenet", method, epochs=9)


def test_lands_within_three_percent_of_the_target_after_rounding(mobilenet_quarter):
    """benchmarks/bernoulli_targets.py: 0.2493 at 0.25 (seed 0); every sample's miss is in
    docs/method-bernoulli.md (vgg at 0.25: tests/methods/test_bernoulli_target.py)."""
    _, result = mobilenet_quarter
    assert abs(result["macs"] / (0.25 * result["macs0"]) - 1) <= 0.03


def test_theta_starts_where_its_samples_leave_the_trained_network_intact(mobilenet_quarter):
    method, _ = mobilenet_quarter
    # the probe's shares fall with theta and it stops at the first within init_tol (or the last)
    shares = [share for _, share in method.init_probe]
    assert method.init == method.init_probe[-1][0] and method.init > 0.9
    assert all(share > method.init_tol for share in shares[:-1])
    assert method.lock == pytest.approx(1 - (1 - method.init) / 5)


def test_most_parameters_reach_zero_or_one_before_rounding(mobilenet_quarter):
    """Counted when rounding begins, before it sets anything: removed (or held at eps), locked at
    1, or inside a removed residual layer. Without the settle phase 81% (docs/method-bernoulli.md)."""
    method, _ = mobilenet_quarter
    assert method.decided_fraction >= 0.9, method.decided_fraction
