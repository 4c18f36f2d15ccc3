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

from onnxprune.cli import main
from onnxprune.errors import ShapeError
from onnxprune.macs import count_macs, count_params, format_count
from onnxprune.normalize import normalize
from onnxprune.passes import PruningPlan, analyze
from onnxprune.passes.testing import check_exact, initializer_shapes, model_from_text, random_plan
from onnxprune.shapes import parse_input_shapes, resolve_input_shapes

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
