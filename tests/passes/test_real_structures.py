"""Structures of real exports, as tiny ONNX-text models (issue 14).

- Paddle-style: weights in Constant nodes, conv biases added as ``Add(conv, Reshape(b))``, batch
  and width stored as -1, a squeeze-excite block (GlobalAveragePool -> 1x1 Conv -> Relu -> 1x1 Conv
  -> HardSigmoid -> Mul) and a gating Add.
- YOLOv8's C2f: one conv's channels split into chunks, bottlenecks on a chunk, a Concat back.

Each case runs the checker before and after, asserts the groups and the pruned weights' shapes,
and compares onnxruntime on the rewritten model with the masked reference (atol 1e-5, rtol 1e-4).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.cli.main import main
from onnxprune.errors import ShapeError
from onnxprune.graph.macs import count_macs, count_params, format_count
from onnxprune.graph.shapes import parse_input_shapes, resolve_input_shapes
from onnxprune.importing.normalize import normalize
from onnxprune.passes import PruningPlan, analyze
from onnxprune.passes.testing import check_exact, initializer_shapes, model_from_text, random_plan

SHAPE = {"x": (1, 3, 8, 16)}

PADDLE_SE = """<ir_version: 8, opset_import: ["" : 14]>
g (float[1,3,8,16] x) => (float[1,4,8,16] y)
<float[8,3,3,3] w1, float[8] k1, float[4,8,1,1] ws1, float[4] ks1, float[8,4,1,1] ws2, float[8] ks2,
 float[8,8,1,1] wa, float[8] ka, float[4,8,1,1] w2, float[4] k2, int64[4] bshape = {1,-1,1,1},
 int64[3] uaxes = {0,2,3}>
{
  c1 = Conv <pads=[1,1,1,1]> (x, w1, k1)
  r1 = HardSwish (c1)
  p = GlobalAveragePool (r1)
  s1c = Conv (p, ws1)
  ks1r = Reshape (ks1, bshape)
  s1 = Add (s1c, ks1r)
  s1r = Relu (s1)
  s2c = Conv (s1r, ws2)
  ks2u = Unsqueeze (ks2, uaxes)
  s2 = Add (s2c, ks2u)
  gate = HardSigmoid <alpha=0.2, beta=0.5> (s2)
  m = Mul (r1, gate)
  q = GlobalAveragePool (m)
  ac = Conv (q, wa, ka)
  ag = Sigmoid (ac)
  a = Add (m, ag)
  y = Conv (a, w2, k2)
}"""


def paddle_style(model: onnx.ModelProto, dynamic: tuple[int, ...] = (0, 3)) -> onnx.ModelProto:
    """Every initializer as a Constant node (Paddle, TF converters); the given axes stored as -1."""
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(constants + nodes)
    for value in (*model.graph.input, *model.graph.output):
        for axis in dynamic:
            value.type.tensor_type.shape.dim[axis].dim_value = -1
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def paddle_se() -> onnx.ModelProto:
    return paddle_style(model_from_text(PADDLE_SE))


# --- 1. dynamic axes stored as -1 ----------------------------------------------------------

def test_minus_one_dimensions_are_dynamic_and_input_shape_sets_them(paddle_se) -> None:
    assert resolve_input_shapes(paddle_se, {"x": (1, 3, 8, 16)}) == SHAPE
    assert resolve_input_shapes(paddle_se, {"x": (4, 3, 8, 32)}) == {"x": (4, 3, 8, 32)}
    with pytest.raises(ShapeError, match="dynamic dimension '\\?' at axis 3"):
        resolve_input_shapes(paddle_se)  # the batch defaults to 1, the width must be given
    with pytest.raises(ShapeError, match="axis 1 is fixed at 3"):
        resolve_input_shapes(paddle_se, {"x": (1, 4, 8, 16)})
    with pytest.raises(ShapeError, match="must be positive .*the size to use"):
        parse_input_shapes(["x=-1x3x8x16"])
    zero = onnx.ModelProto()
    zero.CopyFrom(paddle_se)
    zero.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    zero.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    assert resolve_input_shapes(zero, {"x": (2, 3, 8, 16)}) == {"x": (2, 3, 8, 16)}


# --- 2. squeeze-excite and gating with Constant weights ------------------------------------

def test_paddle_se_is_prunable_with_both_groups(paddle_se) -> None:
    model = normalize(paddle_se)
    assert not [n for n in model.graph.node if n.op_type in ("Constant", "Reshape", "Unsqueeze")]
    analysis = analyze(model, SHAPE)
    groups = {g.id: g for g in analysis.groups}
    assert set(groups) == {"w1", "ws1", "w2"}
    outer, inner = groups["w1"], groups["ws1"]
    assert outer.prunable and inner.prunable, (outer.reason, inner.reason)
    # the excite conv and the gating conv open channels of the SE input's group; their biases follow
    producers = {p.name for p in outer.producers}
    assert {"w1", "k1", "ws2", "ks2u", "wa", "ka"} <= producers
    assert {c.name for c in outer.consumers} == {"ws1", "wa", "w2"}
    assert {p.name for p in inner.producers} == {"ws1", "ks1r"} and {c.name for c in inner.consumers} == {"ws2"}
    plan = random_plan(analysis, seed=3)
    checked = check_exact(model, plan, analysis=analysis)
    shapes = initializer_shapes(checked.pruned)
    assert shapes["w1"] == (4, 3, 3, 3) and shapes["ws1"] == (2, 4, 1, 1) and shapes["ws2"] == (4, 2, 1, 1)
    assert shapes["ks1r"] == (1, 2, 1, 1) and shapes["ks2u"] == (1, 4, 1, 1)
    assert shapes["wa"] == (4, 4, 1, 1) and shapes["w2"] == (4, 4, 1, 1)
    assert checked.macs == checked.predicted_macs < count_macs(model, SHAPE).total_macs


def test_se_excite_channels_removed_alone_stay_exact(paddle_se) -> None:
    """Only the squeeze's inner channels, then only the SE channels: each is exact on its own."""
    model = normalize(paddle_se)
    analysis = analyze(model, SHAPE)
    for kept in ({"ws1": (1, 3)}, {"w1": (0, 1, 5)}):
        check_exact(model, PruningPlan(kept=kept), analysis=analysis)


# --- 4. params of Constant-node weights ----------------------------------------------------

def test_constant_node_weights_are_counted(paddle_se) -> None:
    model = normalize(paddle_se)
    assert count_params(paddle_se) == count_params(model) == sum(
        int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    layers = {layer.node: layer for layer in count_macs(paddle_se, SHAPE).layers}
    first = next(layer for layer in layers.values() if layer.weight == "w1")
    assert first.weight_shape == (8, 3, 3, 3) and first.params == 8 * 27 + 8


# --- the commands on the Paddle-style model ------------------------------------------------

@pytest.fixture
def paddle_path(tmp_path, paddle_se):
    path = tmp_path / "paddle_se.onnx"
    onnx.save(paddle_se, str(path))
    return path


def test_inspect_apply_bench_and_prune_take_the_dynamic_model(paddle_path, paddle_se, tmp_path, capsys) -> None:
    params = count_params(paddle_se)
    assert main(["inspect", str(paddle_path), "--input-shape", "x=1x3x8x16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == params and report["inputs"] == {"x": [1, 3, 8, 16]}
    assert {g["id"]: g["prunable"] for g in report["groups"]} == {"w1": True, "ws1": True, "w2": False}
    assert main(["inspect", str(paddle_path), "--input-shape", "x=1x3x8x16", "--no-import-check", "--json"]) == 0
    quick = json.loads(capsys.readouterr().out)
    assert quick["total_params"] == params and quick["groups"] == report["groups"]

    plan = tmp_path / "plan.json"
    PruningPlan(kept={"w1": (0, 2, 4, 6), "ws1": (1, 2)}).save(plan)
    out = tmp_path / "applied.onnx"
    assert main(["apply", str(paddle_path), "--plan", str(plan), "--out", str(out),
                 "--input-shape", "x=1x3x8x16"]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.startswith("params"))
    assert line.split()[1] == format_count(params) and line.split()[3] != format_count(params)
    applied = onnx.load(str(out))
    onnx.checker.check_model(applied, full_check=True)
    assert applied.graph.input[0].type.tensor_type.shape.dim[0].dim_value in (-1, 0) or \
        applied.graph.input[0].type.tensor_type.shape.dim[0].dim_param

    fast = ["--threads", "1", "--seconds", "0", "--min-runs", "3", "--warmup", "1", "--json"]
    assert main(["bench", str(paddle_path), str(out), "--input-shape", "x=1x3x8x16", *fast]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert rows[0]["params"] == params and rows[1]["params"] < params

    pruned = tmp_path / "pruned.onnx"
    code = main(["prune", str(paddle_path), "--method", "lagrangian", "--calib", "synthetic", "--out", str(pruned),
                 "--input-shape", "x=1x3x8x16", "--epochs", "1", "--batch-size", "8", "--quiet",
                 "--collapse-error", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    onnx.checker.check_model(onnx.load(str(pruned)), full_check=True)
    summary = " ".join(captured.out.split())
    assert f"params {format_count(params)} ->" in summary and "nonzero 0 ->" not in summary, summary


# --- 3. C2f (YOLOv8): one conv's channels split into chunks, concatenated back ----------------

def _silu(name: str, conv: str) -> str:
    return f"{name}_s = Sigmoid ({conv})\n  {name} = Mul ({conv}, {name}_s)"


def _conv(name: str, x: str, w: str, k: str, pads: bool = False) -> str:
    attrs = " <pads=[1,1,1,1]>" if pads else ""
    return f"{name}_c = Conv{attrs} ({x}, {w}, {k})\n  {_silu(name, name + '_c')}"


C2F = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w0, float[8] k0, float[8,8,1,1] wc1, float[8] kc1, float[4,4,3,3] wm0a, float[4] km0a,
 float[4,4,3,3] wm0b, float[4] km0b, float[4,4,3,3] wm1a, float[4] km1a, float[4,4,3,3] wm1b, float[4] km1b,
 float[8,16,1,1] wc2, float[8] kc2, float[6,8,1,1] wd1, float[6] kd1, float[2,2,3,3] wn, float[2] kn,
 float[8,8,1,1] wd2, float[8] kd2, float[4,8,1,1] wy, float[4] ky, int64[2] sp = {{4,4}}, int64[3] sp3 = {{2,2,2}}>
{{
  {_conv("s0", "x", "w0", "k0", pads=True)}
  {_conv("a", "s0", "wc1", "kc1")}
  a0, a1 = Split <axis=1> (a, sp)
  {_conv("m0a", "a1", "wm0a", "km0a", pads=True)}
  {_conv("m0b", "m0a", "wm0b", "km0b", pads=True)}
  b0 = Add (a1, m0b)
  {_conv("m1a", "b0", "wm1a", "km1a", pads=True)}
  {_conv("m1b", "m1a", "wm1b", "km1b", pads=True)}
  b1 = Add (b0, m1b)
  cat = Concat <axis=1> (a0, a1, b0, b1)
  {_conv("e", "cat", "wc2", "kc2")}
  {_conv("d", "e", "wd1", "kd1")}
  d0, d1, d2 = Split <axis=-3> (d, sp3)
  {_conv("n", "d2", "wn", "kn", pads=True)}
  cat2 = Concat <axis=1> (d0, d1, d2, n)
  {_conv("f", "cat2", "wd2", "kd2")}
  y = Conv (f, wy, ky)
}}"""


def test_c2f_chunks_are_groups_of_their_own() -> None:
    model = model_from_text(C2F)
    analysis = analyze(model)
    groups = {g.id: g for g in analysis.groups}
    # the first C2f: chunk 0 goes straight to the Concat, chunk 1 is tied to both bottlenecks' outputs
    assert groups["wc1[0:4]"].prunable and groups["wc1[4:8]"].prunable
    assert {p.name for p in groups["wc1[4:8]"].producers} >= {"wc1", "kc1", "wm0b", "km0b", "wm1b", "km1b"}
    assert [(c.start, c.stop) for c in groups["wc1[4:8]"].consumers if c.name == "wc2"] == [(4, 8), (8, 12), (12, 16)]
    assert [(c.start, c.stop) for c in groups["wc1[0:4]"].consumers] == [(0, 4)]
    assert groups["wm0a"].prunable and groups["wm1a"].prunable
    # the second (no shortcut, three chunks): every chunk and the bottleneck conv prunable
    for gid in ("wd1[0:2]", "wd1[2:4]", "wd1[4:6]", "wn", "wc2", "wd2", "w0"):
        assert groups[gid].prunable, (gid, groups[gid].reason)
    assert not groups["wy"].prunable  # the graph output
    assert {b.add_node for b in analysis.residual_branches} == {"Add_13", "Add_20"}  # the bottlenecks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c2f_random_plans_are_exact(seed) -> None:
    model = model_from_text(C2F, seed=seed)
    analysis = analyze(model)
    plan = random_plan(analysis, seed=seed, fraction=0.5)
    checked = check_exact(model, plan, analysis=analysis)
    dropped = PruningPlan(kept=plan.kept, dropped_branches=("Add_20",) if seed else ("Add_13", "Add_20"))
    assert check_exact(model, dropped, analysis=analysis).macs < checked.macs
    shapes = initializer_shapes(checked.pruned)
    assert shapes["wc1"] == (4, 8 // 2, 1, 1) and shapes["kc1"] == (4,)  # two chunks of 4 -> 2 + 2
    assert shapes["wc2"] == (4, 2 + 2 * 3, 1, 1)  # chunk 0, then chunk 1 read three times
    assert shapes["wd1"] == (3, 4, 1, 1) and shapes["wd2"] == (4, 3 + 1, 1, 1)
    split_sizes = sorted(tuple(int(v) for v in onnx.numpy_helper.to_array(i).reshape(-1))
                         for i in checked.pruned.graph.initializer if i.data_type == onnx.TensorProto.INT64)
    assert (1, 1, 1) in split_sizes and (2, 2) in split_sizes
    assert checked.macs == checked.predicted_macs


def test_c2f_one_chunk_pruned_alone_and_a_chunk_emptied_is_refused() -> None:
    model = model_from_text(C2F)
    analysis = analyze(model)
    checked = check_exact(model, PruningPlan(kept={"wc1[0:4]": (1, 3)}), analysis=analysis)
    shapes = initializer_shapes(checked.pruned)
    assert shapes["wc1"] == (6, 8, 1, 1) and shapes["wc2"] == (8, 14, 1, 1) and shapes["wm0a"] == (4, 4, 3, 3)
    with pytest.raises(Exception, match="wc1\\[0:4\\]"):
        analysis.validate(PruningPlan(kept={"wc1[0:4]": ()}))


# --- Ghost module (GhostNet): Concat(primary, cheap depthwise)[:, :oup] -------------------------

GHOST = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w0, float[8] k0, float[3,8,1,1] wp1, {", ".join(f"float[3] {p}1" for p in ("s", "b", "m", "var"))},
 float[3,1,3,3] wq1, {", ".join(f"float[3] {p}2" for p in ("s", "b", "m", "var"))},
 float[4,5,1,1] wp2, {", ".join(f"float[4] {p}3" for p in ("s", "b", "m", "var"))},
 float[4,1,3,3] wq2, {", ".join(f"float[4] {p}4" for p in ("s", "b", "m", "var"))},
 float[4,8,1,1] wy, float[4] ky, int64[1] zero = {{0}}, int64[1] five = {{5}}, int64[1] eight = {{8}}, int64[1] one = {{1}}>
{{
  c0 = Conv <pads=[1,1,1,1]> (x, w0, k0)
  s0 = Relu (c0)
  p1c = Conv (s0, wp1)
  p1b = BatchNormalization (p1c, s1, b1, m1, var1)
  p1 = Relu (p1b)
  q1c = Conv <group=3, pads=[1,1,1,1]> (p1, wq1)
  q1b = BatchNormalization (q1c, s2, b2, m2, var2)
  q1 = Relu (q1b)
  g1 = Concat <axis=1> (p1, q1)
  o1 = Slice (g1, zero, five, one)
  p2c = Conv (o1, wp2)
  p2 = BatchNormalization (p2c, s3, b3, m3, var3)
  q2c = Conv <group=4, pads=[1,1,1,1]> (p2, wq2)
  q2 = BatchNormalization (q2c, s4, b4, m4, var4)
  g2 = Concat <axis=1> (p2, q2)
  o2 = Slice (g2, zero, eight, one)
  r = Add (s0, o2)
  y = Conv (r, wy, ky)
}}"""


def test_ghost_bottleneck_slice_inside_the_cheap_half_and_its_residual_are_prunable() -> None:
    model = model_from_text(GHOST)
    analysis = analyze(model)
    groups = {g.id: g for g in analysis.groups}
    assert set(groups) == {"w0[0:4]", "wp1[0:2]", "wp1[2:3]", "wy"}
    for gid in ("w0[0:4]", "wp1[0:2]", "wp1[2:3]"):
        assert groups[gid].prunable, (gid, groups[gid].reason)
    # the first ghost module (5 of 6 channels kept): its primary conv is cut where the Slice cuts the
    # cheap half; the first two primary channels are read twice (as themselves, through the cheap conv)
    assert [(c.start, c.stop) for c in groups["wp1[0:2]"].consumers] == [(0, 2), (3, 5)]
    assert [(c.start, c.stop) for c in groups["wp1[2:3]"].consumers] == [(2, 3)]
    # the residual Add ties stem channel c and c + 4 to the second module's primary channel c and
    # its cheap copy: one group of 4 with both halves of w0
    stem = {(p.name, p.start, p.stop) for p in groups["w0[0:4]"].producers}
    assert {("w0", 0, 4), ("w0", 4, 8), ("wp2", 0, 4), ("wq2", 0, 4)} <= stem
    assert [b.id for b in analysis.residual_branches] == ["Add_16"]
    for seed in (0, 1):
        plan = PruningPlan(kept={"wp1[0:2]": (seed,), "w0[0:4]": (0, 3)})
        checked = check_exact(model, plan, analysis=analysis)
        shapes = initializer_shapes(checked.pruned)
        assert shapes["w0"] == (4, 3, 3, 3) and shapes["wp1"] == (2, 4, 1, 1) and shapes["wq1"] == (2, 1, 3, 3)
        assert shapes["wp2"] == (2, 3, 1, 1) and shapes["wq2"] == (2, 1, 3, 3) and shapes["wy"] == (4, 4, 1, 1)
        assert checked.macs == checked.predicted_macs
    for seed in (4, 5):
        plan = random_plan(analysis, seed=seed, branch_fraction=0.5)
        checked = check_exact(model, plan, analysis=analysis)
        assert checked.macs == checked.predicted_macs
