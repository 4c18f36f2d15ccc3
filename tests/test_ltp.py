"""LTP (Learned Threshold Pruning): soft mask and gradient, thresholds, target, trail."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from lc_ltp_harness import accuracy, density, fit, trained_mlp

from onnxprune.errors import OnnxPruneError
from onnxprune.methods import masking
from onnxprune.methods.base import registry
from onnxprune.methods.ltp import LTP


def _reference(x, tau, temp, simplified):
    """Autograd reference: the exact gradient, or the simplified one via a detached score."""
    score = x.detach() ** 2 if simplified else x ** 2
    return x * torch.sigmoid((score - tau) / temp)


@pytest.mark.parametrize("simplified", [True, False])
def test_soft_threshold_value_and_gradients(simplified):
    torch.manual_seed(0)
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    temp = torch.tensor(0.05, dtype=torch.float64)
    g = torch.randn(50, dtype=torch.float64)
    x2, tau2 = x.detach().clone().requires_grad_(), tau.detach().clone().requires_grad_()
    score = x ** 2
    v = masking.soft_threshold(x, score if not simplified else score.detach(), tau, temp, simplified)
    (v * g).sum().backward()
    ref = _reference(x2, tau2, temp, simplified)
    (ref * g).sum().backward()
    torch.testing.assert_close(v, ref)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(tau.grad, tau2.grad)
    m = torch.sigmoid((x.detach() ** 2 - 0.3) / 0.05)
    if simplified:  # ∂v/∂x ≈ m exactly, without the 2x²σ'/T term
        torch.testing.assert_close(x.grad, g * m)
    else:
        torch.testing.assert_close(x.grad, g * (m + 2 * x.detach() ** 2 * m * (1 - m) / 0.05))


def test_temperature_rule_and_threshold_group():
    model = trained_mlp()
    method = LTP(sparsity=0.5, lr_threshold=1e-3, ltp_t0=0.2)
    ctx, _ = fit(method, model, epochs=1)
    for layer, (name, w) in zip(method.layers, [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]):
        assert float(layer.temperature(0.2)) == pytest.approx(0.2 * float(w.detach().abs().var()), rel=1e-5)
    groups = method.param_groups(ctx)
    assert groups[0]["lr"] == 1e-3 and len(groups[0]["params"]) == 3
    in_model = {id(p) for p in model.parameters()}
    assert not any(id(t) in in_model for t in groups[0]["params"])


def test_ltp_reaches_target_with_per_layer_thresholds_and_monotone_sparsity():
    model = trained_mlp()
    base = accuracy(model)
    ctx, plan = fit(LTP(sparsity=0.9), model, epochs=20)
    assert density(model) == pytest.approx(0.10, abs=0.002)
    assert accuracy(model) > base - 0.03  # benchmark: 97.8% vs 98.1% at 90% sparsity
    thresholds = list(plan.meta["thresholds"].values())
    assert max(thresholds) > 1.5 * min(thresholds), thresholds
    sparsity = [h["sparsity"] for h in ctx.history if "step" in h]
    assert len(sparsity) > 20
    assert all(b >= a - 0.005 for a, b in itertools.pairwise(sparsity)), sparsity  # density never rises


def test_sparsity_rises_with_l0_weight():
    reached = []
    for lam in (0.01, 0.1, 1.0):
        model = trained_mlp()
        fit(LTP(l0_weight=lam, ltp_finetune=0.0), model, epochs=6)
        reached.append(1 - density(model))
    assert reached[0] < reached[1] < reached[2], reached


def test_ltp_needs_target_or_weight():
    with pytest.raises(OnnxPruneError, match="--sparsity"):
        fit(LTP(), trained_mlp(), epochs=1)
    assert registry()["ltp"] is LTP


def test_trail_on_the_sample_mlp(tmp_path, sample_models_dir):
    from onnxprune import pipeline
    from onnxprune.training import TrainConfig

    trail = tmp_path / "trail"
    result = pipeline.run(pipeline.PruneConfig(
        model=sample_models_dir / "mlp.onnx", out=tmp_path / "out.onnx", method="ltp",
        method_options={"sparsity": 0.9, "trail": str(trail), "trail_step": 0.1},
        calib=str(sample_models_dir / "digits_train.npz"), train=TrainConfig(epochs=8, lr=3e-3, quiet=True)))
    with open(trail / "trail.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 4
    densities = []
    x = np.load(sample_models_dir / "digits_test.npz")["image"][:32]
    for row in rows:
        model = onnx.load(trail / row["file"])
        weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in result.plan.meta["layer_density"]]
        densities.append(sum(np.count_nonzero(w) for w in weights) / sum(w.size for w in weights))
        assert float(row["accuracy"]) > 0.5
        ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})
        assert 1 - densities[-1] == pytest.approx(float(row["sparsity"]), abs=1e-3)
    assert all(b < a for a, b in itertools.pairwise(densities)), densities


def test_ltp_channel_granularity_removes_channels_physically(tmp_path, sample_models_dir):
    from onnxprune import pipeline
    from onnxprune.macs import count_macs
    from onnxprune.training import TrainConfig

    result = pipeline.run(pipeline.PruneConfig(
        model=sample_models_dir / "vgg.onnx", out=tmp_path / "vgg_ltp.onnx", method="ltp",
        method_options={"sparsity": 0.5, "granularity": "channel"},
        calib=str(sample_models_dir / "digits_train.npz"), train=TrainConfig(epochs=2, lr=3e-3, quiet=True)))
    kept = sum(len(v) for v in result.plan.kept.values())
    total = sum(len(v) / d for v, d in zip(result.plan.kept.values(), result.plan.meta["layer_density"].values()))
    assert 0.35 < kept / total < 0.65  # about half the channels (counts rounded to multiples of 8)
    sizes = [round(len(v) / d) for v, d in zip(result.plan.kept.values(), result.plan.meta["layer_density"].values())]
    assert all(len(v) % 8 == 0 or len(v) == n for v, n in zip(result.plan.kept.values(), sizes))
    shapes = {"image": (1, 1, 8, 8)}
    before = count_macs(onnx.load(sample_models_dir / "vgg.onnx"), shapes).total_macs
    assert count_macs(onnx.load(tmp_path / "vgg_ltp.onnx"), shapes).total_macs < 0.7 * before


def test_align_kept_rounds_to_runtime_friendly_counts():
    scores = torch.arange(16.0)
    keep = torch.zeros(16, dtype=torch.bool)
    keep[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15]] = True  # 11 kept -> 8: drop the 3 lowest-scoring kept
    assert masking.align_kept(keep, scores, 8).nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 8, 9, 15]
    keep = torch.zeros(16, dtype=torch.bool)
    keep[2] = True  # 1 kept -> 8: add the best-scoring pruned channels
    assert masking.align_kept(keep, scores, 8).nonzero().flatten().tolist() == [2, 9, 10, 11, 12, 13, 14, 15]
    assert torch.equal(masking.align_kept(keep[:6], scores[:6], 8), keep[:6])  # small groups untouched
