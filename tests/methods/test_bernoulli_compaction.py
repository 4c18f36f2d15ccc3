"""Bernoulli's physical compaction during training (onnxprune/methods/_support/compaction.py): the gated
model computes the same function before and after a compaction with the same gate sample, the
trained model's MACs are the predicted ones, the optimizer state follows the surviving units,
the final plan refers to the original graph, and in a short run the trained MACs fall while
the losses and the result match a run without compaction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnxprune.graph.macs import count_macs
from onnxprune.graph.verify import assert_close, run_onnxruntime
from onnxprune.importing.importer import import_model
from onnxprune.importing.normalize import normalize
from onnxprune.importing.writeback import write_back
from onnxprune.methods.base import TrainContext
from onnxprune.methods.bernoulli import Bernoulli
from onnxprune.passes import apply_plan
from onnxprune.passes.groups import analyze
from onnxprune.training.loop import prunable_weights
from tests.support.structured import SAMPLES, SHAPES, digits, run


def _context(name: str = "resnet"):
    imported = import_model(onnx.load(str(SAMPLES / f"{name}.onnx")), SHAPES)
    ctx = TrainContext(model=imported.module, imported=imported, weights=prunable_weights(imported),
                       analysis=analyze(imported.onnx_model, SHAPES), device=torch.device("cpu"), epochs=6,
                       steps_per_epoch=1, lr=1e-3)
    method = Bernoulli(strength=10.0)
    method.setup(ctx)
    return ctx, method


def _kill(method: Bernoulli, rng: np.random.Generator, fraction: float, branches=()) -> None:
    """Remove units for good as training would (theta 0, not alive); each group keeps one."""
    with torch.no_grad():
        for g, theta in method.theta.items():
            alive = torch.nonzero(method.alive[g]).flatten().numpy()
            dead = rng.choice(alive, size=min(len(alive) - 1, int(fraction * len(theta))), replace=False)
            method.alive[g][dead] = False
            theta[dead] = 0.0
        for b in branches:
            method.alive[b][...] = False
            method.phi[b].zero_()


def _gated(ctx, method: Bernoulli, x: np.ndarray, seed: int | None) -> np.ndarray:
    method.noise = {} if seed is None else method.sample_noise(torch.Generator().manual_seed(seed))
    ctx.model.eval()
    with torch.no_grad():
        out = ctx.model(torch.from_numpy(x)).numpy()
    method.noise = {}
    return out


def test_compaction_keeps_outputs_state_and_original_plan():
    ctx, method = _context()
    x = digits("test", 64).inputs["image"]
    rng = np.random.default_rng(0)
    branch = next(iter(method.phi))
    macs = []
    for fraction, branches in ((0.5, (branch,)), (0.3, ())):  # two compactions: the maps compose
        _kill(method, rng, fraction, branches)
        before = [_gated(ctx, method, x, seed) for seed in (1, 2, None)]
        old_model, old_params = ctx.model, {n: p for n, p in ctx.model.named_parameters()}
        assert method.compact(ctx)
        assert ctx.model is not old_model and ctx.state_map
        after = [_gated(ctx, method, x, seed) for seed in (1, 2, None)]
        for b, a in zip(before, after):  # stochastic gate samples and the rounded network alike
            assert_close(b, a, what="gated model across a compaction")
        # the trained model has exactly the MACs the resource predicts for the surviving units
        dropped = [b for b in method.phi if not bool(method.alive[b])]
        predicted = method.structure.resource.hard(method.available, dropped)
        assert method.compaction.macs == count_macs(ctx.imported.onnx_model, SHAPES).total_macs == predicted
        macs.append(method.compaction.macs)
        # the optimizer state is sliced to the surviving elements of each weight
        for new, (old, select) in ctx.state_map.items():
            assert any(old is p for p in old_params.values()) and select(old).shape == new.shape
        ctx.state_map = {}
    assert macs[1] < macs[0] < 0.8 * method.b0 and method.compaction.count == 2
    assert branch in method.compaction.dropped and all(t.shape == (n,) for t, n in
                                                       zip(method.theta.values(), method.structure.groups.values()))
    method.round(ctx)
    rounded = _gated(ctx, method, x, None)
    plan = method.finalize(ctx)  # restores the original graph and module with the trained weights
    assert ctx.imported.onnx_model.graph.initializer[0].dims == \
        import_model(onnx.load(str(SAMPLES / "resnet.onnx")), SHAPES).onnx_model.graph.initializer[0].dims
    ctx.model.eval()
    with torch.no_grad():
        restored = ctx.imported.module(torch.from_numpy(x)).numpy()
    assert_close(rounded, restored, what="original module with the compacted model's weights")
    pruned = apply_plan(write_back(ctx.imported), plan, SHAPES)
    assert_close(restored, run_onnxruntime(pruned, {"image": x})[0], what="export from the original graph")
    assert branch in plan.dropped_branches
    # the plan applies to the original model (apply --plan): the same architecture
    original = apply_plan(normalize(onnx.load(str(SAMPLES / "resnet.onnx"))), plan, SHAPES)
    assert {i.name: tuple(i.dims) for i in original.graph.initializer} == \
        {i.name: tuple(i.dims) for i in pruned.graph.initializer}


@pytest.fixture(scope="module")
def short_runs():
    runs = {}
    for compact in (True, False):
        method = Bernoulli(strength=10.0, compact=compact)
        runs[compact] = (method, run("resnet", method, epochs=6, n_train=768))
    return runs


def test_trained_macs_fall_during_a_short_run(short_runs):
    method, result = short_runs[True]
    trained = [h["macs_trained"] for h in result["ctx"].history]
    assert all(a >= b for a, b in zip(trained, trained[1:])) and trained[-1] < 0.7 * trained[0]
    assert trained[-1] == pytest.approx(result["macs"] / result["macs0"], rel=0.01)  # the final model, trained
    assert method.compaction.count >= 1 and result["accuracy"] > 0.95
    # (run() checked that onnxruntime on the export equals the trained torch model)
    assert all(h["macs_trained"] == 1.0 for h in short_runs[False][1]["ctx"].history)


def test_compaction_does_not_change_the_training(short_runs):
    on, off = short_runs[True][1], short_runs[False][1]
    assert on["plan"].kept == off["plan"].kept and on["plan"].dropped_branches == off["plan"].dropped_branches
    # carried Adam moments: the losses after a compaction follow the uncompacted run
    for a, b in zip(on["ctx"].history, off["ctx"].history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    assert abs(on["accuracy"] - off["accuracy"]) <= 1 / 360
