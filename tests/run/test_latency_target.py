"""--target-latency-ms: the search controller on real onnxruntime timings of really pruned models.

Candidates come from ``onnxprune.passes.apply_plan`` with uniform plans (every prunable group
keeps the same share of its channels, chosen so the predicted MACs meet the fraction), and from
whole prune runs (``pipeline.run`` with the lagrangian method) on a wide MLP.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.macs import count_macs, format_count
from onnxprune.passes import PruningPlan, analyze, apply_plan
from onnxprune.reporting.plots import plot_latency_curve
from onnxprune.run.latency_search import (
    latency_meter,
    pick_from_trail,
    prune_to_latency,
    search_runs,
    trail_candidates,
)

SHAPES = {"x": (1, 8, 16, 16)}

CNN_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[N,8,16,16] x) => (float[N,10] y) {
  c1 = Conv <pads = [1,1,1,1]> (x, w1, b1)
  r1 = Relu (c1)
  c2 = Conv <pads = [1,1,1,1]> (r1, w2, b2)
  r2 = Relu (c2)
  c3 = Conv <pads = [1,1,1,1]> (r2, w3, b3)
  r3 = Relu (c3)
  g = GlobalAveragePool (r3)
  f = Flatten (g)
  y = Gemm <transB = 1> (f, w4, b4)
}
"""


def make_cnn(width: int = 64) -> onnx.ModelProto:
    """Three 3x3 convolutions at 16x16, ~20M MACs: a few ms on one thread, compute-bound."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(CNN_TEXT)
    shapes = {"w1": (width, 8, 3, 3), "w2": (width, width, 3, 3), "w3": (width, width, 3, 3), "w4": (10, width)}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        model.graph.initializer.append(
            numpy_helper.from_array((rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32), name))
        bias = "b" + name[1:]
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(shape[0], np.float32), bias))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def cnn():
    return make_cnn()


@pytest.fixture(scope="module")
def prune_at(cnn):
    """A real structured pruning at a MAC fraction: the same kept share in every prunable group."""
    analysis = analyze(cnn, SHAPES)
    total = count_macs(cnn, SHAPES).total_macs
    groups = [g for g in analysis.groups if g.prunable]
    assert groups

    def plan_for(share: float) -> PruningPlan:
        return PruningPlan(kept={g.id: tuple(range(max(1, round(share * g.size)))) for g in groups})

    @functools.cache
    def at(fraction: float) -> onnx.ModelProto:
        lo, hi = 0.0, 1.0  # the largest share whose predicted MACs fit the fraction
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if analysis.predicted_macs(plan_for(mid)) <= fraction * total else (lo, mid)
        return apply_plan(cnn, plan_for(lo), SHAPES)

    return at


@pytest.fixture(scope="module")
def meter():
    feeds = {"x": np.random.default_rng(1).standard_normal(SHAPES["x"]).astype(np.float32)}
    return latency_meter(feeds, "cpu", threads=1, seconds=0.3, min_runs=10)


def test_prune_to_latency_meets_a_measured_target(cnn, prune_at, meter, tmp_path):
    original_ms = meter(cnn)
    target = 0.5 * original_ms
    macs_of = lambda m: count_macs(m, SHAPES).total_macs
    search = prune_to_latency(prune_at, meter, original_ms, target, max_rounds=5, macs_of=macs_of)

    assert search.met, search.curve
    chosen = search.curve[search.chosen]
    assert chosen["latency_ms"] <= target
    assert search.model is search.candidates[search.chosen]
    assert macs_of(search.model) == chosen["macs"] < macs_of(cnn)
    # the curve records every round, and the chosen one is the largest model that met the target
    assert [c["round"] for c in search.curve] == list(range(len(search.curve)))
    assert all(c["met"] == (c["latency_ms"] <= target) for c in search.curve)
    assert chosen["mac_fraction"] == max(c["mac_fraction"] for c in search.curve if c["met"])
    assert all(0.0 < c["mac_fraction"] < 1.0 for c in search.curve)
    # a re-measurement of the chosen model agrees with the target within the noise of a busy machine
    assert meter(search.model) <= 2.0 * target
    section = search.to_dict("cpu")
    assert section["met"] and section["original_ms"] == original_ms and section["curve"] == search.curve
    png = plot_latency_curve(search.curve, target, tmp_path / "latency.png", original_ms)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_converges_on_an_affine_cost():
    """The search math alone, on latency = 0.2 + 0.8 f ms (20% fixed overhead): it must end with
    the largest fraction that meets the target, within the tolerance."""
    latency = lambda f: 0.2 + 0.8 * f
    for target in (0.9, 0.6, 0.3):
        search = prune_to_latency(lambda f: f, latency, latency(1.0), target, max_rounds=8, tolerance=0.02)
        best = (target - 0.2) / 0.8
        assert search.met
        assert best - 0.02 - 0.03 <= search.model <= best + 1e-9  # margin 3% of the target, tolerance
    # an unreachable target (below the overhead) ends at the smallest fraction, not met
    search = prune_to_latency(lambda f: f, latency, latency(1.0), 0.1, max_rounds=10)
    assert not search.met and search.model == pytest.approx(0.02)
    # a model already fast enough gets the lightest pruning allowed, once
    search = prune_to_latency(lambda f: f, latency, latency(1.0), 2.0)
    assert search.met and len(search.curve) == 1 and search.model == 0.95


def test_pick_from_trail_times_few_models(cnn, prune_at, meter):
    fractions = [0.9, 0.75, 0.6, 0.45, 0.3, 0.15]
    candidates = [(f, prune_at(f)) for f in fractions]
    original_ms = meter(cnn)
    target = 0.55 * original_ms
    search = pick_from_trail(candidates, meter, target, original_latency_ms=original_ms)
    assert len(search.curve) <= math.ceil(math.log2(len(fractions))) + 1  # binary search
    assert search.met
    chosen = search.curve[search.chosen]
    assert chosen["latency_ms"] <= target
    # nothing measured that is larger than the chosen one met the target
    assert not any(c["met"] and c["mac_fraction"] > chosen["mac_fraction"] for c in search.curve)


def test_trail_candidates_reads_a_lagrangian_trail(tmp_path, cnn):
    for pct in (80, 60, 40):
        onnx.save(cnn, str(tmp_path / f"macs_{pct:03d}.onnx"))
    (tmp_path / "trail.md").write_text("| level |\n| --- |\n")
    found = trail_candidates(tmp_path)
    assert [f for f, _ in found] == [0.4, 0.6, 0.8]
    assert all(isinstance(p, Path) and p.exists() for _, p in found)


def _wide_mlp(width: int = 768) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    dims = [64, width, width, 10]
    nodes, inits = [helper.make_node("Flatten", ["image"], ["h0"], name="flatten")], []
    for i in range(3):
        weight = (rng.standard_normal((dims[i + 1], dims[i])) / math.sqrt(dims[i])).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"fc{i}.weight"),
                  numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"fc{i}.bias")]
        out = "logits" if i == 2 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"fc{i}.weight", f"fc{i}.bias"], [out], transB=1, name=f"fc{i}"))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"], name=f"relu{i}"))
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_search_runs_over_real_prune_runs(tmp_path, sample_models_dir):
    from onnxprune.run import pipeline
    from onnxprune.training.loop import TrainConfig

    model = _wide_mlp()
    onnx.save(model, str(tmp_path / "wide.onnx"))
    digits = np.load(sample_models_dir / "digits_train.npz")
    np.savez(tmp_path / "calib.npz", image=digits["image"][:192], labels=digits["labels"][:192])
    config = pipeline.PruneConfig(model=tmp_path / "wide.onnx", out=None, method="lagrangian",
                                  calib=str(tmp_path / "calib.npz"), train=TrainConfig(epochs=1, batch_size=64, quiet=True))
    feeds = {"image": digits["image"][:1]}
    original_ms = latency_meter(feeds, seconds=0.3)(model)
    target = 0.6 * original_ms
    runs = []

    def run(options):
        runs.append(options["target_macs"])
        return pipeline.run(dataclasses.replace(config, method_options=options))

    result, search = search_runs(run, {}, model, feeds, target, seconds=0.3, max_rounds=3)
    assert 1 <= len(runs) == len(search.curve) <= 3
    assert [float(t) for t in runs] == [c["mac_fraction"] for c in search.curve]
    assert result is search.model
    section = result.report["latency_target"]
    assert section["curve"] == search.curve and section["provider"] == "cpu" and section["target_ms"] == target
    # each run's MACs are what the report of that run says, and they fall with the fraction
    for c, candidate in zip(search.curve, search.candidates):
        assert c["macs"] == candidate.report["macs"]["after"] == count_macs(candidate.model, {"image": (1, 1, 8, 8)}).total_macs
    by_fraction = sorted(search.curve, key=lambda c: c["mac_fraction"])
    assert [c["macs"] for c in by_fraction] == sorted(c["macs"] for c in by_fraction)
    if search.met:
        assert search.curve[search.chosen]["latency_ms"] <= target
    # the report folder shows the measured curve
    from onnxprune.reporting.folder import write_report_files

    names = [p.name for p in write_report_files(result.report, tmp_path / "rep")]
    assert "latency.png" in names
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Latency target: " in md and "![latency vs MACs](latency.png)" in md
    for c in search.curve:
        assert f"| {c['round']} | {c['mac_fraction']:.3f} | {format_count(c['macs'])} | {c['latency_ms']:.4g} ms |" in md


def test_cli_meets_a_target_at_a_latency_batch(tmp_path, sample_models_dir, capsys):
    """The real command on the sample VGG, timed at --latency-batch 64 (at batch 1 the fixed
    per-call overhead is most of its latency): the target is 75% of the original's p50."""
    from onnxprune.cli.main import main

    model = sample_models_dir / "vgg.onnx"
    feeds = {"image": np.load(sample_models_dir / "digits_train.npz")["image"][:1]}
    target = round(0.75 * latency_meter(feeds, seconds=0.3, batch=64)(onnx.load(str(model))), 4)
    out, report = tmp_path / "small.onnx", tmp_path / "rep"
    code = main([str(model), "--method", "lagrangian", "--target-latency-ms", str(target), "--latency-batch", "64",
                 "--latency-rounds", "3", "--latency-seconds", "0.3", "--providers", "cpu", "--epochs", "1",
                 "--calib", str(sample_models_dir / "digits_train.npz"), "--quiet", "--out", str(out),
                 "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((report / "report.json").read_text())
    section = data["latency_target"]
    assert section["batch"] == 64 and section["provider"] == "cpu" and section["target_ms"] == target
    assert data["latency"]["batch"] == 64  # the folder's before/after timing uses the same batch
    curve = section["curve"]
    assert 1 <= len(curve) <= 3 and all(c["macs"] < data["macs"]["before"] for c in curve)
    # met is what was measured, and the chosen model is the largest that met it
    assert [c["met"] for c in curve] == [c["latency_ms"] <= target for c in curve]
    # each candidate was timed alongside the original; the section's original is their median (and the lone first)
    assert all(c["original_ms"] > 0 for c in curve)
    assert min(c["original_ms"] for c in curve) <= section["original_ms"] or len(curve) == 1
    assert section["met"], curve
    chosen = curve[section["chosen"]]
    assert chosen["latency_ms"] <= target and chosen["macs"] == data["macs"]["after"]
    assert chosen["mac_fraction"] == max(c["mac_fraction"] for c in curve if c["met"])
    assert out.exists() and count_macs(onnx.load(str(out)), {"image": (1, 1, 8, 8)}).total_macs == chosen["macs"]
    stdout = capsys.readouterr().out
    assert f"target      {target:.4g} ms met after {len(curve)} run(s)" in stdout and "batch 64" in stdout
    md = (report / "report.md").read_text()
    assert f"## Latency target: {target:.4g} ms on cpu, batch 64 (met)" in md and (report / "latency.png").exists()


def test_cli_refuses_a_latency_batch_a_fixed_batch_model_cannot_take(tmp_path, sample_models_dir, capsys):
    from onnxprune.cli.main import main

    model = onnx.load(str(sample_models_dir / "mlp.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1  # fixed batch 1
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    code = main([str(tmp_path / "fixed.onnx"), "--method", "lagrangian", "--target-latency-ms", "0.1",
                 "--latency-batch", "8", "--calib", str(sample_models_dir / "digits_train.npz"),
                 "--out", str(tmp_path / "small.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--latency-batch 8: input 'image'" in err and "fixed batch dimension 1" in err
    assert not (tmp_path / "small.onnx").exists()
