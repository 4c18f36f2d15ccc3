"""Bernoulli's per-group unit weights (``--unit-weights auto``): each group's weight on the units'
cost is its loss-sensitivity per unit of cost against the others' (measured on the first steps,
then fixed), so the three knobs stay the only inputs. docs/method-bernoulli.md, "Per-structure weights"."""

from __future__ import annotations

import pytest
import torch

from onnxprune.methods.bernoulli import Bernoulli, _scale_grad
from tests.support.structured import run


def test_scale_grad_keeps_the_value_and_scales_the_gradient():
    v = torch.tensor([0.3, 0.9], requires_grad=True)
    out = _scale_grad(v, 2.5)
    assert torch.allclose(out.detach(), v.detach(), atol=1e-7)  # up to rounding
    (out * torch.tensor([1.0, -4.0])).sum().backward()
    assert torch.allclose(v.grad, torch.tensor([2.5, -10.0]))


@pytest.fixture(scope="module")
def vgg_auto():
    method = Bernoulli(target_macs="0.25", unit_weights="auto")
    return method, run("vgg", method, epochs=9)


def test_auto_weights_are_measured_per_group_and_recorded(vgg_auto):
    """On the vgg sample the first convolutions' units are the most sensitive per unit of cost
    (measured: 2.9, 2.7, 0.52, 0.48, 1.08 over its five groups); with 'cost' every weight is 1."""
    method, result = vgg_auto
    weights = method.weights
    assert set(weights) == set(method.theta)
    assert all(1 / method.weight_clip <= w <= method.weight_clip for w in weights.values())
    assert max(weights.values()) / min(weights.values()) > 2, weights  # not uniform
    # normalized to a geometric mean of 1 (weighted by the groups' cost): some above 1, some below
    assert min(weights.values()) < 1 < max(weights.values()), weights
    assert result["plan"].meta["unit_weights"] == {g: round(w, 4) for g, w in weights.items()}


def test_auto_weights_keep_the_target_and_the_decisions(vgg_auto):
    """Within 3% of the target after rounding, and >= 90% of theta/phi at 0 or 1 before it."""
    method, result = vgg_auto
    assert abs(result["macs"] / (0.25 * result["macs0"]) - 1) <= 0.03
    assert method.decided_fraction >= 0.9, method.decided_fraction
