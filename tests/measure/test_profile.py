"""`onnxprune profile` (issue 19 item 2): the one-node models compute what the layer computes, the
width grid has counts off the multiple of 8, and the command writes a well-formed table."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxprune.cli.main import main
from onnxprune.graph.shapes import infer_static_shapes
from onnxprune.measure.profile import FORMAT, find_layers, kept_grid, single_layer_model, uniform_kept
from tests.support.models import text_model


def profile_model_proto(c: int = 24) -> onnx.ModelProto:
    """Conv 4->c, depthwise conv c, conv c->c, global pool, Gemm c->10 (transB), MatMul 10->6."""
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return text_model(f"""
    g (float[N, 4, 10, 10] x, float[{c}, 4, 3, 3] w1, float[{c}] b1, float[{c}, 1, 3, 3] wd,
       float[{c}, {c}, 1, 1] w2, float[10, {c}] wg, float[10] bg, float[10, 6] wm) => (float[N, 6] y) {{
       [conv1] c1 = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
       r1 = Relu(c1)
       [dw] d = Conv<pads = [1, 1, 1, 1], group = {c}>(r1, wd)
       [conv2] c2 = Conv(d, w2)
       r2 = Relu(c2)
       p = GlobalAveragePool(r2)
       f = Flatten(p)
       [fc] h = Gemm<transB = 1>(f, wg, bg)
       [mm] y = MatMul(h, wm)
    }}""", w1=w(c, 4, 3, 3), b1=w(c), wd=w(c, 1, 3, 3), w2=w(c, c, 1, 1), wg=w(10, c), bg=w(10), wm=w(10, 6))


def _run(model: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    if outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for name in outputs:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(outputs, feeds)


def test_kept_grid_covers_the_multiples_of_8_and_odd_counts():
    grid = kept_grid(64)
    assert {8, 16, 24, 32, 40, 48, 56, 64} <= set(grid)
    assert any(k % 8 for k in grid) and grid == sorted(set(grid)) and grid[-1] == 64
    assert kept_grid(3) == [1, 2, 3] and kept_grid(1) == [1]
    # 96 wide: every multiple of 8 the width rounding can keep (k/8 of 96 would be 12, 36, 60, 84:
    # not multiples of 8, where onnxruntime's CPU convs leave the NCHWc layout)
    assert set(range(8, 97, 8)) <= set(kept_grid(96))
    assert [k for k in kept_grid(100) if k % 8] == [30, 55, 81, 100]  # the odd counts and the width
    wide = [k for k in kept_grid(1280) if k % 8 == 0]
    assert len(wide) == 12 and wide[0] == 8 and wide[-1] == 1280
    assert [uniform_kept(f, 24) for f in (0.75, 0.5, 0.25)] == [16, 16, 8]  # multiples of 8, not 18, 12, 6
    assert [uniform_kept(f, 96) for f in (0.75, 0.5, 0.25)] == [72, 48, 24]
    assert uniform_kept(0.5, 6) == 3 and uniform_kept(0.25, 16) == 8


def test_single_layer_models_compute_what_the_layer_computes_at_full_and_sliced_width():
    model = profile_model_proto()
    shaped = infer_static_shapes(model, {"x": (2, 4, 10, 10)})
    layers = {layer.name: layer for layer in find_layers(shaped)}
    assert set(layers) == {"conv1", "dw", "conv2", "fc", "mm"}
    assert layers["dw"].depthwise and (layers["fc"].full_out, layers["fc"].full_in) == (10, 24)
    x = np.random.default_rng(1).standard_normal((2, 4, 10, 10)).astype(np.float32)
    by_name = {n.name: n for n in model.graph.node}
    for name, layer in layers.items():
        node = by_name[name]
        inp, want = _run(model, {"x": x}, [node.input[0], node.output[0]])
        single, shape = single_layer_model(layer, layer.full_out, layer.full_in, 20)
        onnx.checker.check_model(single, full_check=True)
        assert shape == inp.shape
        np.testing.assert_allclose(_run(single, {"x": inp})[0], want, rtol=1e-4, atol=1e-5)
        # sliced: the first k outputs of the layer (the first k inputs for a depthwise conv)
        k = max(1, layer.full_out // 3)
        sliced, shape = single_layer_model(layer, k, layer.full_in, 20)
        onnx.checker.check_model(sliced, full_check=True)
        got = _run(sliced, {"x": inp[:, :k] if layer.depthwise else inp})[0]
        axis = 1 if node.op_type == "Conv" else -1
        np.testing.assert_allclose(got, np.take(want, np.arange(k), axis=axis), rtol=1e-4, atol=1e-5)
    # input side: conv2 with its first 5 inputs equals the layer fed zeros in the other channels
    layer = layers["conv2"]
    inp = _run(model, {"x": x}, [by_name["conv2"].input[0]])[0]
    single, shape = single_layer_model(layer, layer.full_out, 5, 20)
    assert shape[1] == 5
    zeroed = inp.copy()
    zeroed[:, 5:] = 0
    full, _ = single_layer_model(layer, layer.full_out, layer.full_in, 20)
    np.testing.assert_allclose(_run(single, {"x": inp[:, :5]})[0], _run(full, {"x": zeroed})[0], rtol=1e-4, atol=1e-5)


def test_profile_writes_a_well_formed_table(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(profile_model_proto(), path)
    out = tmp_path / "latency.json"
    code = main(["profile", str(path), "--batch", "2,4", "--seconds", "0.05", "--min-runs", "3", "--warmup", "1",
                 "--layers", "dw,conv2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = json.loads(out.read_text())
    assert table["format"] == FORMAT and table["threads"] == 1
    assert set(table["versions"]) >= {"onnxruntime", "onnx", "numpy"} and table["versions"]["onnx"] == onnx.__version__
    assert [(p["provider"], p["batch"]) for p in table["profiles"]] == [("cpu", 2), ("cpu", 4)]
    for profile in table["profiles"]:
        assert profile["device"] and profile["input_shapes"] == {"x": [profile["batch"], 4, 10, 10]}
        layers = {entry["node"]: entry for entry in profile["layers"]}
        assert set(layers) == {"dw", "conv2"}  # as --layers asks
        assert profile["remainder_ms"] == pytest.approx(profile["model_p50_ms"] - profile["layers_sum_ms"])
        assert profile["layers_sum_ms"] == pytest.approx(sum(e["full_p50_ms"] for e in layers.values()))
        for name, entry in layers.items():
            out_sweep = entry["sweeps"]["out"]
            assert [p["kept"] for p in out_sweep] == kept_grid(entry["full_out"])
            assert all(p["p50_ms"] > 0 and p["p90_ms"] >= p["p50_ms"] * 0.999 and p["runs"] >= 3 for p in out_sweep)
            if entry["depthwise"]:
                assert "in" not in entry["sweeps"]
            else:
                assert [p["kept"] for p in entry["sweeps"]["in"]] == kept_grid(entry["full_in"])
                # the full width timed in each sweep (in a shuffled order); L_t is their mean
                ends = (entry["sweeps"]["in"][-1]["p50_ms"], out_sweep[-1]["p50_ms"])
                assert entry["full_p50_ms"] == pytest.approx(sum(ends) / 2)
        assert any(p["kept"] % 8 for p in layers["conv2"]["sweeps"]["out"])  # 24 wide: odd counts swept
        # the whole model also timed uniformly pruned: S(f) falls with f, the map is increasing
        points = profile["calibration"]["points"]
        assert [p["fraction"] for p in points] == [1.0, 0.75, 0.5, 0.25]
        # pruned as the width rounding prunes: multiples of 8 (groups of 24, 24 and 10: at 3/4
        # 16, 16, 8, not 18, 18, 8)
        assert [sorted(p["kept"].values()) for p in points] == [[10, 24, 24], [8, 16, 16], [8, 16, 16], [8, 8, 8]]
        assert points[0]["model_ms"] == pytest.approx(profile["model_p50_ms"])
        assert points[0]["layers_sum_ms"] == pytest.approx(profile["layers_sum_ms"])
        assert all(a["layers_sum_ms"] >= b["layers_sum_ms"] for a, b in zip(points, points[1:]))  # suffix minima
        assert points[0]["layers_sum_ms"] > points[-1]["layers_sum_ms"]
        # a fit that noise made non-increasing is refused (2 tiny layers here), never used
        calibration = profile["calibration"]
        assert calibration.get("scale", 1) > 0 and ("scale" in calibration or "fit was not increasing" in calibration["note"])


def test_profile_refuses_a_model_without_prunable_layers(tmp_path, capsys):
    model = text_model("g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }")
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    assert main(["profile", str(path), "--out", str(tmp_path / "t.json")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: no prunable layer") and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()
    # a weight that is a graph input is not constant: that layer is not profiled
    model = text_model("g (float[N, 3] x, float[3, 2] w) => (float[N, 2] y) { y = MatMul(x, w) }")
    assert find_layers(infer_static_shapes(model, {"x": (1, 3), "w": (3, 2)})) == []


def test_cpu_clock_profile_and_its_conditions(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(profile_model_proto(), path)
    out = tmp_path / "latency.json"
    assert main(["profile", str(path), "--clock", "cpu", "--seconds", "0.05", "--min-runs", "3", "--warmup", "1",
                 "--layers", "conv2", "--out", str(out)]) == 0, capsys.readouterr().err
    table = json.loads(out.read_text())
    assert table["clock"] == "cpu" and table["threads"] == 1
    (entry,) = table["profiles"][0]["layers"]
    assert entry["node"] == "conv2" and all(p["p50_ms"] > 0 and p["runs"] >= 3 for p in entry["sweeps"]["out"])
    # the thread's CPU time is the call's only with one thread on the CPU provider
    assert main(["profile", str(path), "--clock", "cpu", "--threads", "2", "--out", str(tmp_path / "x.json")]) != 0
    assert "--clock cpu times the calling thread" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/missing/t.json"], "the directory {tmp}/missing does not exist"),
    (["--layers", "nosuch", "--out", "{tmp}/t.json"], "--layers: no prunable layer named 'nosuch' (the prunable layers are conv1"),
    (["--batch", "0", "--out", "{tmp}/t.json"], "--batch must be >= 1, got 0"),
    (["--seconds", "nan", "--out", "{tmp}/t.json"], "not a finite number"),
])
def test_bad_options_are_one_error_line(tmp_path, capsys, args, message):
    path = tmp_path / "m.onnx"
    onnx.save(profile_model_proto(), path)
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["profile", str(path), *args]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
