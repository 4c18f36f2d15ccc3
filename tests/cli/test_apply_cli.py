"""``onnxprune apply``: plans applied from JSON, dead structure removed without a plan, bad plans refused.

Runs the real command line in a subprocess, as a user would.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.passes import PruningPlan, analyze, masked_reference
from onnxprune.passes.testing import model_from_text, random_feeds, run

NET = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] image) => (float[N,4,8,8] y)
<float[8,3,3,3] w1, float[8] s1, float[8] b1, float[8] m1, float[8] var1, float[8,8,3,3] w2, float[8] s2, float[8] b2,
 float[8] m2, float[8] var2, float[4,8,1,1] w3>
{
  c1 = Conv <pads=[1,1,1,1]> (image, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  c2 = Conv <pads=[1,1,1,1]> (r1, w2)
  t2 = BatchNormalization (c2, s2, b2, m2, var2)
  a = Add (r1, t2)
  y = Conv (a, w3)
}"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", "apply", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(model_from_text(NET), str(path))
    return path


def _outputs(model, batch: int = 2):
    feeds = random_feeds(model, {"image": (batch, 3, 8, 8)}, seed=5)
    return run(model, feeds)[0]


def test_apply_plan_writes_a_smaller_equal_model(tmp_path, model_path) -> None:
    model = onnx.load(str(model_path))
    analysis = analyze(model)
    plan = PruningPlan(kept={"w1": (0, 2, 4, 6)}, dropped_branches=(analysis.residual_branches[0].id,))
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "out.onnx"
    result = run_cli(str(model_path), "--plan", str(tmp_path / "plan.json"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "MACs" in result.stdout and "params" in result.stdout and "->" in result.stdout
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    assert {i.name: tuple(i.dims) for i in pruned.graph.initializer}["w3"] == (4, 4, 1, 1)
    assert "w2" not in {i.name for i in pruned.graph.initializer}  # the branch's weights are gone
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch kept
    expected = _outputs(masked_reference(model, plan, analysis))
    np.testing.assert_allclose(_outputs(pruned), expected, atol=1e-5, rtol=1e-4)


def test_apply_without_plan_removes_zeroed_channels(tmp_path, model_path) -> None:
    model = onnx.load(str(model_path))
    for name in ("w1", "w2"):  # channel 3 of the residual group dies in both producers
        init = next(i for i in model.graph.initializer if i.name == name)
        array = numpy_helper.to_array(init).copy()
        array[3] = 0
        init.CopyFrom(numpy_helper.from_array(array, name))
    for name in ("b1", "b2"):  # ... and its BatchNorm shifts leave a negative constant that ReLU zeroes
        init = next(i for i in model.graph.initializer if i.name == name)
        array = numpy_helper.to_array(init).copy()
        array[3] = -5.0
        init.CopyFrom(numpy_helper.from_array(array, name))
    zeroed = tmp_path / "zeroed.onnx"
    onnx.save(model, str(zeroed))
    out = tmp_path / "out.onnx"
    result = run_cli(str(zeroed), "--out", str(out), "--input-shape", "image=1x3x8x8")
    assert result.returncode == 0, result.stderr
    pruned = onnx.load(str(out))
    assert {i.name: tuple(i.dims) for i in pruned.graph.initializer}["w1"] == (7, 3, 3, 3)
    np.testing.assert_allclose(_outputs(pruned), _outputs(model), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("plan_text, fragment", [
    ('{"kept": {"nope": [0]}}', "unknown channel group 'nope'"),
    ('{"kept": {"w1": [0, 99]}}', "out of range"),
    ('{"kept": {"w3": [0]}}', "is frozen"),
    ("{broken", "not valid JSON"),
])
def test_bad_plan_is_one_line_and_writes_nothing(tmp_path, model_path, plan_text, fragment) -> None:
    (tmp_path / "plan.json").write_text(plan_text)
    before = model_path.read_bytes()
    out = tmp_path / "out.onnx"
    result = run_cli(str(model_path), "--plan", str(tmp_path / "plan.json"), "--out", str(out))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0] and "Traceback" not in result.stderr
    assert not out.exists() and model_path.read_bytes() == before


def test_out_equal_to_input_is_refused(model_path) -> None:
    result = run_cli(str(model_path), "--out", str(model_path))
    assert result.returncode != 0 and "is the input file" in result.stderr
