"""PruningPlan: JSON round trip, normalization, and validation against a model (one-line errors)."""

from __future__ import annotations

import json

import pytest

from onnxprune.errors import OnnxPruneError
from onnxprune.passes import PlanError, PruningPlan, analyze
from onnxprune.passes.testing import model_from_text

RESIDUAL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w1, float[8] s1, float[8] b1, float[8] m1, float[8] var1, float[6,8,3,3] w2, float[6] s2, float[6] b2,
 float[6] m2, float[6] var2, float[8,6,3,3] w3, float[8] s3, float[8] b3, float[8] m3, float[8] var3, float[4,8,1,1] w4>
{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  c2 = Conv <pads=[1,1,1,1]> (r1, w2)
  t2 = BatchNormalization (c2, s2, b2, m2, var2)
  r2 = Relu (t2)
  c3 = Conv <pads=[1,1,1,1]> (r2, w3)
  t3 = BatchNormalization (c3, s3, b3, m3, var3)
  a = Add (r1, t3)
  y = Conv (a, w4)
}"""


@pytest.fixture(scope="module")
def analysis():
    return analyze(model_from_text(RESIDUAL))


def test_json_round_trip_and_normalization(tmp_path) -> None:
    plan = PruningPlan(kept={"w1": [5, 1, 3]}, dropped_branches=("b", "b"), meta={"method": "x"})
    assert plan.kept["w1"] == (1, 3, 5) and plan.dropped_branches == ("b",)
    path = tmp_path / "plan.json"
    plan.save(path)
    assert PruningPlan.load(path) == plan
    assert json.loads(path.read_text())["kept"] == {"w1": [1, 3, 5]}
    with pytest.raises(TypeError):
        plan.kept["w1"] = (0,)  # frozen


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a JSON object"),
    ('{"kept": {"a": [1.5]}}', "lists of integers"),
    ('{"kept": {}, "extra": 1}', "unknown key"),
    ('{"format": "other/9"}', "unknown format"),
    ("{not json", "not valid JSON"),
])
def test_malformed_plan_files_fail_in_one_line(tmp_path, text, message) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(PlanError, match=message) as info:
        PruningPlan.load(path)
    assert isinstance(info.value, OnnxPruneError) and "\n" not in str(info.value)


def test_missing_plan_file(tmp_path) -> None:
    with pytest.raises(PlanError, match="no such plan file"):
        PruningPlan.load(tmp_path / "missing.json")


def test_repeated_index_is_refused() -> None:
    with pytest.raises(PlanError, match="twice"):
        PruningPlan(kept={"w1": (1, 1)})


def test_groups_and_branches_have_stable_onnx_names(analysis) -> None:
    ids = {g.id: g for g in analysis.groups}
    assert set(ids) == {"w1", "w2", "w4"}  # w3 joins w1 through the residual Add
    assert ids["w1"].prunable and ids["w2"].prunable and ids["w2"].branch == analysis.residual_branches[0].id
    assert not ids["w4"].prunable and "graph output" in ids["w4"].reason
    assert {t.name for t in ids["w1"].gate_tensors} == {"s1", "b1", "s3", "b3"}
    branch = analysis.residual_branches[0]
    assert branch.skip_value == "r1" and branch.branch_output == "t3" and len(branch.nodes) == 5


@pytest.mark.parametrize("plan, message", [
    (PruningPlan(kept={"nope": (0,)}), "unknown channel group 'nope'"),
    (PruningPlan(kept={"w1": (0, 8)}), "kept index 8 out of range 0..7"),
    (PruningPlan(kept={"w1": ()}), "cannot be emptied"),
    (PruningPlan(kept={"w4": (0,)}), "is frozen"),
    (PruningPlan(dropped_branches=("nope",)), "unknown residual branch 'nope'"),
])
def test_validation_errors_name_the_problem(analysis, plan, message) -> None:
    with pytest.raises(PlanError, match=message) as info:
        analysis.validate(plan)
    assert "\n" not in str(info.value)


def test_predicted_macs_and_describe(analysis) -> None:
    total = analysis.total_macs
    assert analysis.predicted_macs(PruningPlan()) == total
    drop = PruningPlan(dropped_branches=(analysis.residual_branches[0].id,))
    assert analysis.predicted_macs(drop) == total - analysis.residual_branches[0].macs
    empty_inner = PruningPlan(kept={"w2": ()})  # the branch becomes a constant: same MACs as dropping it
    assert analysis.predicted_macs(empty_inner) == analysis.predicted_macs(drop)
    lines = analysis.describe(PruningPlan(kept={"w1": (0, 1, 2, 3)}, dropped_branches=drop.dropped_branches))
    assert lines[0].startswith("group w1: keep 4/8") and "removed" in lines[1] and lines[-1].startswith("MACs")


def test_grouped_conv_output_keeps_equal_counts_per_conv_group() -> None:
    model = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,8,8] x) => (float[1,2,8,8] y) <float[6,2,3,3] wg, float[2,6,1,1] wo>
{
  c = Conv <group=2, pads=[1,1,1,1]> (x, wg)
  r = Relu (c)
  y = Conv (r, wo)
}""")
    analysis = analyze(model)
    group = analysis.group("wg")
    assert group.prunable and group.chunks == 2
    analysis.validate(PruningPlan(kept={"wg": (0, 2, 3, 4)}))  # two of each conv group's three
    with pytest.raises(PlanError, match="equally many channels in each run of 3"):
        analysis.validate(PruningPlan(kept={"wg": (0, 1, 2, 3)}))
