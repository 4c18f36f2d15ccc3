"""The magnitude baseline: cubic schedule, one global budget, masks that only grow, exact target;
the LAMP criterion's scale invariance."""

from __future__ import annotations

import pytest
import torch

from onnxprune.calibration import TaskLoss
from onnxprune.errors import OnnxPruneError
from onnxprune.methods.base import registry
from onnxprune.methods.magnitude import Magnitude, cubic_sparsity
from onnxprune.training.loop import TrainConfig, TrainData, train


def test_cubic_schedule():
    assert cubic_sparsity(0, 100, 0.8) == 0.0
    assert cubic_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_sparsity(100, 100, 0.8) == cubic_sparsity(500, 100, 0.8) == 0.8
    values = [cubic_sparsity(t, 100, 0.8) for t in range(101)]
    assert values == sorted(values)
    # front-loaded: most of the pruning happens early, while the network can still recover
    assert cubic_sparsity(33, 100, 0.8) > 0.5 * 0.8


class Recording(Magnitude):
    """Keeps every mask it computed, to check they only ever shrink."""

    def _update(self, ctx, sparsity):
        super()._update(ctx, sparsity)
        self.history = getattr(self, "history", []) + [{n: m.bool() for n, m in self.masks.items()}]


def _train(method, scale_first: float = 1.0, lr: float = 1e-2):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    with torch.no_grad():
        net[0].weight.mul_(scale_first)
        net[2].weight.div_(scale_first)
        teacher.load_state_dict(net.state_dict())
        x = torch.randn(128, 16)
        data = TrainData([x], [teacher(x)])
    weights = {"w1": net[0].weight, "w2": net[2].weight}
    ctx = train(method, net, weights, data, TaskLoss(["logits"], "kd"),
                TrainConfig(epochs=4, batch_size=32, lr=lr, quiet=True))
    return net, weights, ctx


def test_reaches_exact_global_target_with_growing_masks():
    method = Recording(sparsity=0.75, prune_ramp=0.5)
    net, weights, ctx = _train(method)
    plan = method.finalize(ctx)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.75 * total) and plan.is_empty
    assert plan.meta["sparsity"] == pytest.approx(0.75, abs=1 / total)
    assert set(plan.meta["layer_sparsity"]) == {"w1", "w2"}
    for earlier, later in zip(method.history, method.history[1:]):
        for name in earlier:
            assert not (later[name] & ~earlier[name]).any()  # nothing pruned comes back
    sparsities = [h["sparsity"] for h in ctx.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.75, abs=1 / total)
    assert len(method.history) > 4  # gradual: many mask updates, not one shot


def test_budget_is_global_not_per_layer():
    # the first layer scaled up 10x, the second down (same function through ReLU): a global
    # threshold now prunes the second layer far harder; a per-layer rule would not notice.
    method = Magnitude(sparsity=0.5)
    _, weights, ctx = _train(method, scale_first=10.0)
    layer = method.finalize(ctx).meta["layer_sparsity"]
    assert layer["w2"] > 0.95 and layer["w1"] < 0.5


def test_lamp_ignores_a_rescaled_layer():
    # the same function with one layer scaled up 10x and the other down, trained at a rate that
    # leaves the weights in place (Adam's steps do not scale with a layer, so training would
    # mix in a second effect): LAMP keeps exactly the unscaled network's weights, where the
    # global |w| threshold (test above) empties the scaled-down layer
    kept = []
    for scale in (1.0, 10.0):
        method = Magnitude(sparsity=0.5, criterion="lamp")
        _, weights, ctx = _train(method, scale_first=scale, lr=1e-9)
        layer = method.finalize(ctx).meta["layer_sparsity"]
        assert 0.2 < layer["w1"] < 0.8 and 0.2 < layer["w2"] < 0.8
        kept.append({name: w != 0 for name, w in weights.items()})
    assert all(torch.equal(kept[0][name], kept[1][name]) for name in kept[0])


def test_lamp_scores():
    from onnxprune.methods.magnitude import lamp_scores

    w = torch.tensor([[3.0, -1.0], [0.0, 2.0]])
    # sorted by |w|: 3, 2, -1, 0; mass above including itself: 9, 13, 14, 14
    expected = torch.tensor([[1.0, 1 / 14], [0.0, 4 / 13]], dtype=torch.float64)
    assert torch.allclose(lamp_scores(w), expected)
    assert torch.allclose(lamp_scores(1000 * w), expected)


def test_registered_and_validates_sparsity():
    assert registry()["magnitude"] is Magnitude
    with pytest.raises(OnnxPruneError, match="--method magnitude needs --sparsity"):
        Magnitude()
    for bad in (1.0, -0.1, "half", float("nan")):  # checked once, by the typed options
        with pytest.raises(OnnxPruneError, match="--sparsity"):
            Magnitude(sparsity=bad)
    with pytest.raises(OnnxPruneError, match="unknown option.*sparsty"):
        Magnitude(sparsty=0.5)
