"""Residual layer removal: ``Add(x, f(x))`` -> ``x``; an emptied branch -> ``Add(x, constant)``."""

from __future__ import annotations

from onnxprune.passes import PruningPlan, analyze
from onnxprune.passes.testing import check_exact, model_from_text
from tests.support.models import H17, block, chain


def test_drop_consecutive_branches() -> None:
    model = model_from_text(chain(3))
    analysis = analyze(model)
    assert [b.id for b in analysis.residual_branches] == ["Add_6", "Add_12", "Add_18"]
    plan = PruningPlan(dropped_branches=("Add_6", "Add_12"))
    checked = check_exact(model, plan, analysis=analysis)
    ops = [n.op_type for n in checked.pruned.graph.node]
    assert ops.count("Conv") == 4 and ops.count("Add") == 1
    assert checked.macs == checked.predicted_macs


def test_drop_branch_whose_add_is_the_graph_output_keeps_the_output_name() -> None:
    model = model_from_text(chain(1, output_is_add=True))
    analysis = analyze(model)
    plan = PruningPlan(dropped_branches=(analysis.residual_branches[0].id,))
    checked = check_exact(model, plan, analysis=analysis)
    assert [o.name for o in checked.pruned.graph.output] == ["a1"]
    assert [n.op_type for n in checked.pruned.graph.node] == ["Conv", "Identity"]


def test_drop_branch_whose_add_is_a_graph_output_and_read_further() -> None:
    decl, nodes = block(1, "r0")
    model = model_from_text(f"""{H17}
g (float[1,3,8,8] x) => (float[1,8,8,8] a1, float[1,8,8,8] z) <float[8,3,3,3] w0, {decl}>
{{
  r0 = Conv <pads=[1,1,1,1]> (x, w0){nodes}
  z = Relu (a1)
}}""")
    analysis = analyze(model)
    checked = check_exact(model, PruningPlan(dropped_branches=(analysis.residual_branches[0].id,)), analysis=analysis)
    assert [n.op_type for n in checked.pruned.graph.node] == ["Conv", "Identity", "Relu"]
    assert [o.name for o in checked.pruned.graph.output] == ["a1", "z"]


def test_emptied_inner_group_turns_the_branch_into_a_constant() -> None:
    model = model_from_text(chain(2))
    analysis = analyze(model)
    inner = next(g for g in analysis.groups if g.id == "wa1")
    assert inner.branch == "Add_6"
    plan = PruningPlan(kept={"wa1": (), "w0": (0, 3, 4, 7)})  # the residual stream is pruned too
    checked = check_exact(model, plan, analysis=analysis)
    initializers = {i.name: tuple(i.dims) for i in checked.pruned.graph.initializer}
    assert "wa1" not in initializers and "wb1" not in initializers
    assert initializers["tb1_constant"] == (1, 4, 1, 1)
    assert checked.macs == checked.predicted_macs


def test_transformer_style_branch_with_matmul_bias() -> None:
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,5,8] x) => (float[1,5,8] y) <float[8,8] we, float[8,16] w1, float[16] k1, float[16,8] w2, float[8] k2>
{
  e = MatMul (x, we)
  h0 = MatMul (e, w1)
  h = Add (h0, k1)
  a = Relu (h)
  o0 = MatMul (a, w2)
  o = Add (o0, k2)
  r = Add (e, o)
  y = Relu (r)
}"""
    model = model_from_text(text)
    analysis = analyze(model)
    branch = analysis.residual_branches[0]
    assert {t.name for t in branch.gate_tensors} == {"w2", "k2"}
    checked = check_exact(model, PruningPlan(dropped_branches=(branch.id,)), analysis=analysis)
    assert [n.op_type for n in checked.pruned.graph.node] == ["MatMul", "Relu"]
