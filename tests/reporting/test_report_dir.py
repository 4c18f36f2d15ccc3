"""--report DIR: layer widths from ONNX models, and the folder written from a real prune run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from matplotlib.image import imread

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.macs import format_count
from onnxprune.passes import PruningPlan, analyze, apply_plan
from onnxprune.reporting.folder import (
    add_model_figures,
    layer_widths,
    read_trail,
    render_markdown,
    taper_points,
    widths_table,
    write_report_files,
)

WIDTHS_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
widths (float[1,4,6,6] x, float[3,5] z) => (float[1,7,6,6] conv, float[1,6,8,8] deconv, float[1,9] gemm_t,
                                          float[1,2] gemm, float[1,4,6,3] matmul, float[3,3] act, float[2,5] left) {
  conv = Conv <pads = [1,1,1,1]> (x, wc)
  deconv = ConvTranspose <group = 2> (x, wd)
  f = Flatten (x)
  gemm_t = Gemm <transB = 1> (f, wg)
  gemm = Gemm (f, wh)
  matmul = MatMul (x, wm)
  zt = Transpose (z)
  act = MatMul (z, zt)
  left = MatMul (wl, z)
}
"""


def _widths_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(WIDTHS_TEXT)
    shapes = {"wc": (7, 4, 3, 3), "wd": (4, 3, 3, 3), "wg": (9, 144), "wh": (144, 2), "wm": (6, 3), "wl": (2, 3)}
    for name, shape in shapes.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(shape, np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_layer_widths_per_op():
    widths = layer_widths(_widths_model())
    # Conv: W[0]; ConvTranspose: W[1] * group; Gemm: B[0] with transB else B[1]; x @ W: W[-1];
    # W @ x: W[-2]; an activation x activation MatMul has no width
    assert {name: w["width"] for name, w in widths.items()} == {"wc": 7, "wd": 6, "wg": 9, "wh": 2, "wm": 3, "wl": 2}
    assert widths["wd"]["op_type"] == "ConvTranspose" and list(widths) == ["wc", "wd", "wg", "wh", "wm", "wl"]


def test_widths_follow_a_real_pruning(sample_models_dir):
    model = onnx.load(str(sample_models_dir / "vgg.onnx"))
    shapes = {"image": (1, 1, 8, 8)}
    groups = [g for g in analyze(model, shapes).groups if g.prunable]
    plan = PruningPlan(kept={g.id: tuple(range(0, g.size, 2)) for g in groups})  # every other channel
    pruned = apply_plan(model, plan, shapes)
    table = {row["name"]: row for row in widths_table(model, pruned)}
    assert {row["before"] for row in table.values()} == {16, 32, 64, 10}
    for group in groups:
        assert table[group.id]["after"] == len(plan.kept[group.id]) == (group.size + 1) // 2
    assert table["classifier.3.weight"]["after"] == 10  # the output layer keeps its classes
    report = {}
    add_model_figures(report, model, pruned)
    assert report["size_bytes"]["after"] < report["size_bytes"]["before"] == model.ByteSize()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, sample_models_dir):
    """A real lagrangian run on the sample MLP (3 epochs), with a trail."""
    from onnxprune.run import pipeline
    from onnxprune.training.loop import TrainConfig

    trail = tmp_path_factory.mktemp("trail")
    config = pipeline.PruneConfig(model=sample_models_dir / "mlp.onnx", out=None, method="lagrangian",
                                  method_options={"target_macs": "0.5", "trail": str(trail)},
                                  calib=str(sample_models_dir / "digits_train.npz"),
                                  train=TrainConfig(epochs=3, batch_size=64, quiet=True))
    return pipeline.run(config), trail


def test_report_folder_from_a_real_run(real_run, tmp_path):
    from onnxprune.run.acceptance import Gates, evaluate_gates, measure_before_after, record_gates

    result, trail = real_run
    report = json.loads(json.dumps(result.report))  # a copy, as plain JSON
    add_model_figures(report, result.imported.onnx_model, result.model)
    report["trail"] = read_trail(trail)
    original = onnx.load(str(result.report["input"]))
    feeds = {"image": np.zeros((1, 1, 8, 8), np.float32)}
    report["latency"] = measure_before_after(original, result.model, feeds, seconds=0.2)
    record_gates(report, evaluate_gates(Gates(min_fidelity=0.5, max_latency_ms=1e3), report))

    written = write_report_files(report, tmp_path / "rep")
    assert [p.name for p in written] == ["report.json", "report.md", "widths.png", "taper.png", "trail.png"]
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(p.name for p in written)
    for png in written[2:]:
        pixels = imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.std() > 0.05  # a drawn figure, not blank

    stored = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert stored["layer_widths"] == [{"name": "fc1.weight", "node": "node_linear", "op_type": "Gemm", "before": 300,
                                       "after": layer_widths(result.model)["fc1.weight"]["width"]},
                                      {"name": "fc2.weight", "node": "node_linear_1", "op_type": "Gemm", "before": 100,
                                       "after": layer_widths(result.model)["fc2.weight"]["width"]},
                                      {"name": "fc3.weight", "node": "node_linear_2", "op_type": "Gemm", "before": 10,
                                       "after": 10}]
    assert stored["macs"]["after"] <= 0.5 * stored["macs"]["before"]
    assert [row["file"] for row in stored["trail"]] == sorted((p.name for p in trail.glob("*.onnx")), reverse=True)
    assert stored["latency"]["before"]["p50_ms"] > 0 and stored["gates"][1]["name"] == "--min-fidelity"  # after the collapse check

    md = (tmp_path / "rep" / "report.md").read_text()
    macs = stored["macs"]
    assert (f"| MACs per sample | {format_count(macs['before'])} | {format_count(macs['after'])} | "
            f"{macs['after'] / macs['before']:.1%} |") in md
    assert f"| fidelity (top-1 agreement with the original) | 100.00% | {stored['pruned']['top1_agreement']:.2%} |" in md
    assert "**Status: accepted** (all 3 gates met)." in md  # the collapse check and the two set
    for image in ("widths.png", "taper.png", "trail.png"):
        assert f"]({image})" in md
    assert md.count("| `macs_0") == len(stored["trail"])
    assert "| `fc1.weight` | Gemm | 300 |" in md and "## Latency target" not in md


def test_taper_follows_the_history(real_run):
    result, _ = real_run
    points, x_key = taper_points(result.report)
    history = result.report["history"]
    assert x_key == "macs" and len(points) == len(history) + 2  # original, each epoch, written model
    assert points[0]["macs"] == result.report["macs"]["before"] and points[0]["fidelity"] == 1.0
    assert points[-1]["macs"] == result.report["macs"]["after"]
    assert points[-1]["fidelity"] == result.report["pruned"]["top1_agreement"]
    assert [p["macs"] for p in points[1:-1]] == [h["macs_frac"] * result.report["macs"]["before"] for h in history]


def test_taper_of_a_weight_level_method_is_against_sparsity(sample_models_dir, tmp_path):
    from onnxprune.run import pipeline
    from onnxprune.training.loop import TrainConfig

    config = pipeline.PruneConfig(model=sample_models_dir / "mlp.onnx", out=None, method="magnitude",
                                  method_options={"sparsity": 0.8}, calib=str(sample_models_dir / "digits_train.npz"),
                                  train=TrainConfig(epochs=2, batch_size=64, quiet=True))
    result = pipeline.run(config)
    points, x_key = taper_points(result.report)
    assert x_key == "sparsity" and points[0]["sparsity"] == 0.0
    assert points[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)  # magnitude zeroes exactly 80% of the weights
    assert [p["sparsity"] for p in points[1:-1]] == [h["sparsity"] for h in result.report["history"]]
    report = dict(result.report)
    add_model_figures(report, result.imported.onnx_model, result.model)
    names = [p.name for p in write_report_files(report, tmp_path / "rep")]
    assert names == ["report.json", "report.md", "widths.png", "taper.png"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| point | sparsity | fidelity | accuracy |" in md and "| written | 80.0% |" in md


def test_json_path_writes_one_file(real_run, tmp_path):
    result, _ = real_run
    assert write_report_files(result.report, tmp_path / "run.json") == [tmp_path / "run.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert json.loads((tmp_path / "run.json").read_text())["macs"] == result.report["macs"]


def test_report_folder_over_a_file_is_refused(real_run, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OnnxPruneError, match="not a directory"):
        write_report_files(real_run[0].report, tmp_path / "taken")


def test_markdown_of_a_rejected_run_says_so(real_run):
    report = dict(real_run[0].report, gates=[
        {"name": "--min-fidelity", "threshold": 0.999, "measured": 0.9, "passed": False, "unit": "", "note": ""},
        {"name": "--max-accuracy-drop", "threshold": 0.01, "measured": None, "passed": False, "unit": "",
         "note": "the calibration data has no labels"}], status="rejected", rejected_output="small.rejected.onnx")
    md = render_markdown(report)
    assert "**Status: REJECTED** (2 of 2 gates missed)" in md and "`small.rejected.onnx`" in md
    assert "| `--min-fidelity` | 99.90% | 90.00% | **missed** |" in md
    assert "not measured: the calibration data has no labels" in md
    assert "![" not in md  # no images named, none linked
