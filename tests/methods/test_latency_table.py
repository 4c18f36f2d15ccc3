"""The latency table as the structured methods' resource (issue 19 item 3): exact at measured
widths, differentiable and monotone in the kept fractions, width rounding off odd-count bumps, a
prediction close to a fresh measurement, and `--latency-table` end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from onnxprune.cli.main import main
from onnxprune.methods._support.latency_table import (
    LatencyResource,
    LatencyTable,
    layer_widths,
    predict_model_latency,
    suffix_min,
)
from onnxprune.methods._support.resource import select_to_budget, terms_from_analysis
from onnxprune.passes.groups import analyze
from tests.support.models import SAMPLE_MODELS, text_model


def conv_model(c1: int = 16, c2: int = 16, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """conv1 3->c1 (3x3), conv2 c1->c2 (3x3), global pool, fc c2->4: groups conv1 (c1) and conv2 (c2)."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    return text_model(f"""
    g (float[N, 3, {hw}, {hw}] x, float[{c1}, 3, 3, 3] w1, float[{c1}] b1, float[{c2}, {c1}, 3, 3] w2,
       float[{c2}] b2, float[4, {c2}] wf, float[4] bf) => (float[N, 4] y) {{
       [conv1] a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
       r1 = Relu(a)
       [conv2] b = Conv<pads = [1, 1, 1, 1]>(r1, w2, b2)
       r2 = Relu(b)
       p = GlobalAveragePool(r2)
       f = Flatten(p)
       [fc] y = Gemm<transB = 1>(f, wf, bf)
    }}""", w1=w(c1, 3, 3, 3), b1=w(c1), w2=w(c2, c1, 3, 3), b2=w(c2), wf=w(4, c2), bf=w(4))


GRID = [2, 4, 6, 8, 10, 12, 13, 14, 16]


def _sweep(values):
    return [{"kept": k, "p50_ms": v, "p90_ms": v, "runs": 5} for k, v in zip(GRID, values)]


def synthetic_table(path):
    """conv1: out-sweep linear 0.1..0.8; conv2: out-sweep linear to 2.0, in-sweep linear with a
    2.5x bump at 13 inputs (as onnxruntime's CPU convs show on odd input counts); fc: flat 0.05."""
    lin = lambda top: [top * k / 16 for k in GRID]  # noqa: E731
    conv2_in = [2.0 * k / 16 for k in GRID]
    conv2_in[GRID.index(13)] = 5.0
    layers = [
        {"node": "conv1", "output": "a", "op": "Conv", "full_out": 16, "full_in": 3, "depthwise": False,
         "full_p50_ms": 0.8, "sweeps": {"out": _sweep(lin(0.8))}},
        {"node": "conv2", "output": "b", "op": "Conv", "full_out": 16, "full_in": 16, "depthwise": False,
         "full_p50_ms": 2.0, "sweeps": {"out": _sweep(lin(2.0)), "in": _sweep(conv2_in)}},
        {"node": "fc", "output": "y", "op": "Gemm", "full_out": 4, "full_in": 16, "depthwise": False,
         "full_p50_ms": 0.05, "sweeps": {"out": [{"kept": 4, "p50_ms": 0.05, "p90_ms": 0.05, "runs": 5}],
                                         "in": _sweep([0.05] * len(GRID))}},
    ]
    profile = {"provider": "cpu", "device": "test", "batch": 8, "model_p50_ms": 3.1, "layers_sum_ms": 2.85,
               "remainder_ms": 0.25, "model_p50_spread_ms": [3.1, 3.1], "layers": layers}
    path.write_text(json.dumps({"format": "onnxprune-latency-table/1", "threads": 1, "profiles": [profile]}))
    return path


def latency_resource_for(model, table_path):
    analysis = analyze(model)
    groups = {g.id: g.size for g in analysis.groups if g.prunable and g.size > 1}
    terms = terms_from_analysis(analysis, model)
    nodes = [t.node for t in analysis.mac_terms]
    return LatencyResource(terms, nodes, groups, [], LatencyTable(table_path)), analysis


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = synthetic_table(tmp_path_factory.mktemp("table") / "t.json")
    resource, analysis = latency_resource_for(conv_model(), path)
    producer = {}
    for group in analysis.groups:  # group id of each conv's output channels
        for term in analysis.mac_terms:
            if any(piece.group == group.id for piece in term.outputs):
                producer.setdefault(term.node, group.id)
    return resource, producer["conv1"], producer["conv2"]


def _mask(n: int, size: int = 16) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[:n] = True
    return mask


def test_exact_at_full_width_and_at_measured_widths(synthetic):
    resource, g1, g2 = synthetic
    assert resource.unmatched == []
    assert resource.total_ms == pytest.approx(3.1)  # remainder + the layers at full width = the model
    # conv1 keeps 8: conv1 out 0.4, conv2 with 8 of 16 inputs 2.0 * 1.0 / 2.0, fc unchanged
    got = resource.hard({g1: _mask(8), g2: _mask(16)})
    assert got == pytest.approx(0.25 + 0.4 + 2.0 * (2.0 * 8 / 16) / 2.0 + 0.05)
    # both halved: conv2 out at 8 (1.0) times its input factor (1.0 / 2.0)
    assert resource.hard({g1: _mask(8), g2: _mask(8)}) == pytest.approx(0.25 + 0.4 + 1.0 * 1.0 / 2.0 + 0.05)
    # the curves interpolate only the multiples of 8 (and the full width): the width rounding keeps
    # nothing else, so the odd-count bump at 13 inputs of conv2 is not read, raw or not
    for raw in (False, True):
        got = resource.hard({g1: _mask(13), g2: _mask(16)}, raw=raw)
        assert got == pytest.approx(0.25 + 0.65 + 2.0 * (2.0 * 13 / 16) / 2.0 + 0.05)


def test_each_sweep_is_read_as_ratios_to_its_own_full_width(tmp_path):
    """A sweep timed 10% slow throughout (as the second half of an interleaved list ran 10-15%
    apart from the first) changes nothing: lat = L * P_out(f) / P_out(1) * P_in(f) / P_in(1)."""
    path = synthetic_table(tmp_path / "t.json")
    data = json.loads(path.read_text())
    conv2 = data["profiles"][0]["layers"][1]
    for point in conv2["sweeps"]["in"]:
        point["p50_ms"] *= 1.1
    biased = tmp_path / "biased.json"
    biased.write_text(json.dumps(data))
    model = conv_model()
    exact, _ = latency_resource_for(model, path)
    slow, analysis = latency_resource_for(model, biased)
    producer = {t.node: next(p.group for p in t.outputs) for t in analysis.mac_terms if t.outputs}
    g1, g2 = producer["conv1"], producer["conv2"]
    for masks in ({g1: _mask(8), g2: _mask(16)}, {g1: _mask(8), g2: _mask(8)}, {g1: _mask(16), g2: _mask(16)}):
        assert slow.hard(masks) == pytest.approx(exact.hard(masks))
    assert slow.hard({g1: _mask(8), g2: _mask(16)}) == pytest.approx(0.25 + 0.4 + 2.0 * 0.5 + 0.05)


def test_differentiable_and_monotone_in_the_kept_fraction(synthetic):
    resource, g1, g2 = synthetic
    values, grads = [], []
    for f in np.linspace(0.05, 1.0, 40):
        gate = torch.full((16,), float(f), dtype=torch.float64, requires_grad=True)
        r = resource({g1: gate, g2: torch.ones(16)})
        r.backward()
        values.append(float(r.detach()))
        grads.append(gate.grad.clone())
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))  # the 13-input bump is not a dip after it
    assert all(torch.isfinite(g).all() and (g >= 0).all() for g in grads)
    assert sum(float(g.sum()) > 0 for g in grads) >= 38
    # the MAC-style params path still works (Bernoulli's cost mixes both)
    assert float(resource({g1: torch.ones(16)}, weights="params")) == pytest.approx(resource.total_params)


def test_rounding_moves_off_the_odd_count_bump_to_a_no_slower_width(synthetic):
    resource, g1, g2 = synthetic
    scores = {g1: torch.arange(16, 0, -1, dtype=torch.float64), g2: torch.arange(16, 0, -1, dtype=torch.float64)}
    rounded = resource.round_widths(scores, {g1: _mask(13), g2: _mask(16)}, band=4)
    assert int(rounded[g1].sum()) == 16  # the one multiple of 8 within 4 of 13
    rounded = resource.round_widths(scores, {g1: _mask(8), g2: _mask(16)}, band=4)
    assert int(rounded[g1].sum()) == 8  # a linear stretch: nothing is free, the count stays
    # the budget selection with a band: under the target, widths from the table
    target = 0.6 * resource.total_ms
    masks = select_to_budget(scores, resource, target, multiple=4)
    assert resource.hard(masks) <= target and resource.hard(masks, raw=True) <= target * 1.001
    assert all(int(m.sum()) % 8 == 0 for m in masks.values())  # multiples of ALIGN (onnxruntime's blocking)


def test_calibration_maps_the_layer_sum_onto_the_whole_model(tmp_path):
    path = synthetic_table(tmp_path / "t.json")
    data = json.loads(path.read_text())
    points = [(1.0, 2.85, 3.0), (0.5, 1.5, 1.4), (0.25, 0.9, 1.0)]
    data["profiles"][0]["calibration"] = {"offset_ms": 0.0, "scale": 1.0, "points": [
        {"fraction": f, "layers_sum_ms": s, "model_ms": m} for f, s, m in points]}
    path.write_text(json.dumps(data))
    table = LatencyTable(path)
    at = lambda s: float(table.model_latency(torch.tensor(s, dtype=torch.float64)))  # noqa: E731
    assert [at(s) for _, s, _ in points] == pytest.approx([3.0, 1.4, 1.0])
    assert at(2.0) == pytest.approx(1.4 + (3.0 - 1.4) * (2.0 - 1.5) / (2.85 - 1.5))
    assert at(0.6) == pytest.approx(1.0 - (1.4 - 1.0) / (1.5 - 0.9) * 0.3)  # along the end segment
    resource, _ = latency_resource_for(conv_model(), path)
    assert resource.total_ms == pytest.approx(3.0)  # the calibrated whole model at full width


def test_suffix_min_keeps_the_full_width_and_is_non_decreasing():
    y = suffix_min([1.0, 3.0, 2.0, 5.0, 4.0])
    assert list(y) == [1.0, 2.0, 2.0, 4.0, 4.0]


def test_prediction_of_a_pruned_model_is_near_a_fresh_measurement(tmp_path):
    """Profiled and measured on this (shared, noisy) machine: the predicted latency ratio of a
    half-width model to the full one within 30% of the measured ratio, and in the right order.
    Both by thread CPU time (--clock cpu): the wall clock of a shared, overloaded machine counts
    the time a call was preempted (onnxprune/measure/profile.py)."""
    from onnxprune.measure.profile import profile_model, time_cpu

    full, half = conv_model(32, 64, hw=16), conv_model(16, 32, hw=16)
    table_path = tmp_path / "t.json"
    table_path.write_text(json.dumps(profile_model(full, batches=[8], threads=1, seconds=0.3, min_runs=5, warmup=2,
                                                       clock="cpu")))
    table = LatencyTable(table_path)
    assert layer_widths(half)["conv2"] == (16, 32)
    predicted = predict_model_latency(table, half) / predict_model_latency(table, full)
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    stats = time_cpu([full, half], [{"x": x}] * 2, seconds=1.5, min_runs=10)
    measured = stats[1].p50_ms / stats[0].p50_ms
    assert predicted < 1 and measured < 1
    assert abs(predicted / measured - 1) < 0.3, (predicted, measured)


@pytest.fixture(scope="module")
def mlp_table(tmp_path_factory):
    table_path = tmp_path_factory.mktemp("mlp") / "mlp.latency.json"
    assert main(["profile", str(SAMPLE_MODELS / "mlp.onnx"), "--batch", "16", "--seconds", "0.15", "--min-runs", "5",
                 "--warmup", "1", "--out", str(table_path)]) == 0
    return table_path


@pytest.mark.parametrize("method", ["lagrangian", "bernoulli"])
def test_prune_with_a_latency_table_runs_end_to_end_and_meets_the_predicted_budget(tmp_path, method, capsys,
                                                                                   mlp_table):
    model = SAMPLE_MODELS / "mlp.onnx"
    table_path = mlp_table
    out = tmp_path / "mlp.pruned.onnx"
    code = main([str(model), "--method", method, "--target-macs", "0.8", "--latency-table", str(table_path),
                 "--calib", str(SAMPLE_MODELS / "digits_train.npz"), "--epochs", "2", "--lr", "1e-3",
                 "--collapse-agreement", "0", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    table = LatencyTable(table_path)
    full = predict_model_latency(table, onnx.load(model))
    assert predict_model_latency(table, pruned) <= 0.8 * full * 1.01
    # something was pruned: which group the latency budget takes depends on the (noisy, 0.15 s)
    # table; the accuracy of a 2-epoch run at such a table is not what this test is about
    widths = layer_widths(pruned)
    assert widths["node_linear"][1] < 300 or widths["node_linear_1"][1] < 100
    assert '"latency_table"' in captured.out


def test_target_latency_with_a_table_is_one_run_at_the_predicted_fraction(tmp_path, mlp_table):
    """--target-latency-ms T with --latency-table: the budget is T / the table's whole-model p50,
    trained once (no search), and the chosen model is measured once alongside the original."""
    table_ms = LatencyTable(mlp_table, batch=16).model_ms
    report = tmp_path / "run.json"
    code = main([str(SAMPLE_MODELS / "mlp.onnx"), "--method", "lagrangian", "--latency-table", str(mlp_table),
                 "--target-latency-ms", f"{0.8 * table_ms:.6g}", "--latency-batch", "16", "--latency-seconds", "0.3",
                 "--calib", str(SAMPLE_MODELS / "digits_train.npz"), "--epochs", "2", "--quiet",
                 "--collapse-agreement", "0", "--out", str(tmp_path / "out.onnx"), "--report", str(report)])
    assert code in (0, 3)  # 3: a missed target is a gate like the others; the run itself happened
    target = json.loads(report.read_text())["latency_target"]
    assert target["via"] == "latency table" and len(target["curve"]) == 1
    assert target["curve"][0]["mac_fraction"] == pytest.approx(0.8, abs=1e-3)
    assert target["curve"][0]["latency_ms"] > 0 and target["curve"][0]["original_ms"] > 0
