"""LC (Learning-Compression): the augmented-Lagrangian loop on the real training loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.methods._support import projections
from onnxprune.methods._support.projections import global_topk_mask
from onnxprune.methods.base import TrainContext, registry
from onnxprune.methods.lc import LC
from tests.support.lc_ltp import OneShotMagnitude, accuracy, density, fit, trained_mlp


def _toy_ctx(w0: float) -> TrainContext:
    w = torch.nn.Parameter(torch.tensor([w0]))
    model = torch.nn.Module()
    model.w = w
    return TrainContext(model=model, imported=None, weights={"w": w}, analysis=None,
                        device=torch.device("cpu"), epochs=1, steps_per_epoch=400, lr=0.1)


def _run_toy(mu_factor: float) -> list[float]:
    """min ½(w − 1)² s.t. ||w||_0 <= 0 with fixed μ = 1: w must be driven to θ = 0."""
    ctx = _toy_ctx(1.0)
    method = LC(sparsity=0.5, mu0=1.0, mu_factor=mu_factor, lc_steps=20, lc_finetune=0.0)
    method.setup(ctx)
    method.kappa = 0  # one weight: prune it
    method.theta = method._project({"w": ctx.weights["w"].detach()})
    opt = torch.optim.SGD([ctx.weights["w"]], lr=0.1)
    for step in range(400):
        ctx.step = step
        opt.zero_grad()
        (0.5 * (ctx.weights["w"] - 1.0).pow(2).sum() + method.penalty(ctx)).backward()
        opt.step()
        method.after_step(ctx)
    return method.gaps


def test_multiplier_update_drives_w_to_theta_at_fixed_mu():
    # quadratic penalty alone would leave w = 1/(1 + μ) = 0.5 at μ = 1; the multiplier removes
    # the gap. With the opposite sign of λ's update the gap would grow instead.
    gaps = _run_toy(mu_factor=1.0)
    assert gaps[1] > 0.4 and gaps[-1] < 1e-3, gaps


def test_multiplier_sign_is_minus_mu_times_gap():
    ctx = _toy_ctx(0.3)
    method = LC(sparsity=0.5, mu0=2.0, lc_steps=1, lc_finetune=0.0)
    method.setup(ctx)
    method.kappa = 0
    with torch.no_grad():
        ctx.weights["w"].fill_(0.3)
    ctx.step = method.l_length - 1
    method.after_step(ctx)  # C step: θ = Π(w − λ/μ) = 0, then λ ← λ − μ(w − θ)
    assert float(method.theta["w"]) == 0.0
    assert float(method.lam["w"]) == pytest.approx(-2.0 * 0.3)


def test_lc_is_registered_with_shared_options():
    assert registry()["lc"] is LC
    names = LC.option_names()
    assert {"sparsity", "granularity", "mu0", "mu_factor", "lc_steps", "lc_form"} <= names


def test_lc_needs_a_budget():
    with pytest.raises(OnnxPruneError, match="--sparsity"):
        LC().setup(_toy_ctx(1.0))


def test_lc_beats_one_shot_magnitude_at_2_percent_and_learns_layer_densities():
    one_shot = trained_mlp()
    fit(OneShotMagnitude(0.98), one_shot, epochs=30)
    model = trained_mlp()
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    kappa = round(0.02 * sum(w.numel() for w in weights.values()))
    magnitude = {n: float(m.float().mean()) for n, m in global_topk_mask(weights, kappa).items()}
    _ctx, plan = fit(LC(sparsity=0.98), model, epochs=30)
    # exactly κ weights kept (global budget), the per-layer split learned, not prescribed
    assert density(model) == pytest.approx(0.02, abs=1e-4)
    layer = plan.meta["layer_density"]
    # global magnitude at the same κ (LC's start) already spreads the densities 3.3% / 0.26% /
    # 28.8%, so the spread proves nothing; LC must move away from that allocation: measured
    # 2.0% / 0.38% / 49.8% (the output layer 1.7x magnitude's)
    ratios = [max(layer[n], magnitude[n]) / max(min(layer[n], magnitude[n]), 1e-9) for n in magnitude]
    assert max(ratios) > 1.4, (layer, magnitude)
    # ||w − θ|| approaches 0 along the LC steps
    gaps = plan.meta["gaps"]
    assert gaps[-1] < 0.1 * gaps[0], gaps
    lc_acc, one_acc = accuracy(model), accuracy(one_shot)
    assert lc_acc >= one_acc + 0.05, (lc_acc, one_acc)  # benchmark: +11.1 points (96.7 vs 85.6)
    assert plan.is_empty  # unstructured: zeros only, the dead-structure pass removes dead units


def _test_accuracy(model: onnx.ModelProto, sample_models_dir) -> float:
    import onnxruntime as ort

    data = np.load(sample_models_dir / "digits_test.npz")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"image": data["image"]})[0].argmax(1) == data["labels"]).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lc_keeps_5_percent_within_1_point_of_the_original(sample_models_dir, seed):
    """Issue 5's check (benchmarks/lc_ltp_checks.py, 1b): the real pipeline on the digits MLP with
    LC's defaults, distilled on all of digits_train.npz (--holdout 0), 30 epochs; onnxruntime on
    the 360 unseen test images (original 98.9%: at most 3 more errors)."""
    from onnxprune.run import pipeline
    from onnxprune.training.loop import TrainConfig, prunable_weights

    result = pipeline.run(pipeline.PruneConfig(
        model=sample_models_dir / "mlp.onnx", out=None, method="lc", method_options={"sparsity": 0.95},
        calib=str(sample_models_dir / "digits_train.npz"), holdout=0.0,
        train=TrainConfig(epochs=30, lr=3e-3, seed=seed, quiet=True, device="cpu")))
    trained = list(prunable_weights(result.imported).values())  # κ kept jointly across the layers
    assert sum(int(w.count_nonzero()) for w in trained) == round(0.05 * sum(w.numel() for w in trained))
    written = [numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name.endswith("weight")]
    assert sum(np.count_nonzero(w) for w in written) <= round(0.05 * sum(w.numel() for w in trained))
    gaps = result.plan.meta["gaps"]
    assert gaps[-1] < 0.02 * gaps[0], gaps  # benchmark: 24.5 -> 0.20 at seed 0
    original = _test_accuracy(onnx.load(sample_models_dir / "mlp.onnx"), sample_models_dir)
    pruned = _test_accuracy(result.model, sample_models_dir)
    assert pruned >= original - 0.01, (pruned, original)  # benchmark: 98.1% vs 98.9% at seeds 0-2


@pytest.mark.parametrize("form", ["l1-constraint", "l0-penalty", "l1-penalty"])
def test_other_compression_forms_make_zeros(form):
    model = trained_mlp()
    options = {"l1-constraint": {"lc_radius": 0.1}, "l0-penalty": {"lc_alpha": 1e-4},
               "l1-penalty": {"lc_alpha": 1e-3}}[form]
    fit(LC(lc_form=form, lc_steps=5, **options), model, epochs=5)
    assert density(model) < 0.9
    assert accuracy(model) > 0.5


def test_lc_channel_granularity_removes_channels_physically(tmp_path, sample_models_dir):
    from onnxprune.run import pipeline
    from onnxprune.training.loop import TrainConfig

    result = pipeline.run(pipeline.PruneConfig(
        model=sample_models_dir / "vgg.onnx", out=None, method="lc",
        method_options={"sparsity": 0.5, "granularity": "channel", "lc_steps": 4},
        calib=str(sample_models_dir / "digits_train.npz"),
        train=TrainConfig(epochs=2, lr=3e-3, quiet=True)))
    assert result.plan.kept and min(result.plan.meta["layer_density"].values()) < 1.0
    original = onnx.load(sample_models_dir / "vgg.onnx")
    size = lambda m: sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    assert size(result.model) < 0.6 * size(original)
    onnx.checker.check_model(result.model, full_check=True)


def _channel_lc(norm: str, sizes=(3, 4), kappa=4, scales=(1.0, 0.1)) -> tuple[LC, dict]:
    """An LC channel C step on hand-made groups: group g has sizes[g] channels (one row each of
    a [channels, 2] tensor), its rows drawn at scale scales[g]."""
    torch.manual_seed(1)
    values, groups, ids = {}, [], []
    for g, (size, scale) in enumerate(zip(sizes, scales)):
        values[f"t{g}"] = torch.randn(size, 2) * scale
        for k in range(size):
            groups.append([(f"t{g}", 0, k)])
            ids.append((f"g{g}", k))
    method = LC(sparsity=0.5, granularity="channel", lc_channel_norm=norm)
    method.vars, method.groups, method.group_ids, method.kappa = values, groups, ids, kappa
    method.group_index = {f"g{g}": torch.tensor([i for i, (gid, _) in enumerate(ids) if gid == f"g{g}"])
                          for g in range(len(sizes))}
    method.channel, method.form, method.relative = True, "l0-constraint", norm == "relative"
    method.channel_weight = method._layer_normalization() if method.relative else None
    method.penalty_weight = method._penalty_weights() if method.relative else None
    return method, values


def _paired_penalty(method: LC, values: dict, theta: dict) -> float:
    weights = method.penalty_weight or {n: torch.ones_like(v) for n, v in values.items()}
    return float(sum((weights[n] * (values[n] - theta[n]).pow(2)).sum() for n in values))


@pytest.mark.parametrize("norm", ["plain", "relative"])
def test_lc_channel_c_step_is_the_exact_projection_for_its_penalty(norm):
    """Brute force over every feasible set (κ channels, at least one per group): the C step's θ
    minimises the penalty it is paired with (unweighted for plain, c_g-weighted for relative)."""
    method, values = _channel_lc(norm)
    theta = method._project(values)
    best = math.inf
    for chosen in itertools.combinations(range(len(method.groups)), method.kappa):
        if {method.group_ids[i][0] for i in chosen} != {"g0", "g1"}:
            continue
        keep = torch.zeros(len(method.groups), dtype=torch.bool)
        keep[list(chosen)] = True
        best = min(best, _paired_penalty(method, values, projections.zero_groups(values, method.groups, keep)))
    assert int(method.keep.sum()) == method.kappa
    assert _paired_penalty(method, values, theta) == pytest.approx(best, rel=1e-9)


def test_relative_ranking_is_not_the_projection_for_the_unweighted_penalty():
    """Why the pre-issue-18 pairing was wrong: the relative-norm keep set, scored by the
    unweighted penalty it was paired with, costs more than the plain-norm one (its projection)."""
    relative, values = _channel_lc("relative", kappa=4)
    plain, _ = _channel_lc("plain", kappa=4)
    relative_theta, plain_theta = relative._project(values), plain._project(values)
    assert not torch.equal(relative.keep, plain.keep)
    assert _paired_penalty(plain, values, relative_theta) > 1.5 * _paired_penalty(plain, values, plain_theta)
