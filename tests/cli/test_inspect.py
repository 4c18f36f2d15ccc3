"""`onnxprune inspect`: the cost table, groups, import check, JSON, dynamic shapes."""

from __future__ import annotations

import json

import onnx
import pytest

from onnxprune.cli.main import main
from tests.support.models import SAMPLE_MODELS, SAMPLE_NAMES


def test_inspect_json_tiny(tiny_conv_path, capsys):
    assert main(["inspect", str(tiny_conv_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == {"x": [1, 3, 8, 8]}
    assert [layer["op"] for layer in report["layers"]] == ["Conv", "Gemm"]
    assert report["total_macs"] == 6 * 64 * 27 + 24
    assert report["import_check"]["max_abs_error"] < 1e-5
    conv = report["layers"][0]
    assert conv["weight_shape"] == [6, 3, 3, 3] and conv["prunable"] is True


def test_inspect_table_tiny(tiny_conv_path, capsys):
    assert main(["inspect", str(tiny_conv_path)]) == 0
    out = capsys.readouterr().out
    assert "Conv" in out and "Gemm" in out and "import check" in out and "total" in out


def test_inspect_dynamic_dims_need_input_shape(tmp_path, capsys):
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,H,W] x, float[4,3,1,1] w) => (float[N,4,H,W] y) { y = Conv (x, w) }
        """
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path), "--no-import-check"]) == 2
    assert "--input-shape x=" in capsys.readouterr().err
    assert main(["inspect", str(path), "--no-import-check", "--json", "--input-shape", "x=1x3x5x5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_macs"] == 4 * 25 * 3


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_inspect_sample_models(name, capsys):
    path = SAMPLE_MODELS / f"{name}.onnx"
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_macs"] > 0 and report["total_params"] > 0
    assert report["import_check"]["max_abs_error"] < 1e-4
    assert any(layer["prunable"] for layer in report["layers"])


def test_inspect_plan_predicts_the_applied_macs(tmp_path, capsys):
    from onnxprune.graph.macs import count_macs
    from onnxprune.importing.importer import import_model
    from onnxprune.passes import analyze, apply_plan
    from onnxprune.passes.plan import PruningPlan

    path = SAMPLE_MODELS / "resnet.onnx"
    shapes = {"image": (1, 1, 8, 8)}
    normalized = import_model(onnx.load(str(path)), shapes).onnx_model
    analysis = analyze(normalized, shapes)
    plan = PruningPlan(kept={g.id: tuple(range(0, g.size, 2)) for g in analysis.prunable_groups},
                       dropped_branches=(analysis.residual_branches[0].id,))
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    assert main(["inspect", str(path), "--plan", str(plan_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["plan"]
    assert report["branches_dropped"] == [analysis.residual_branches[0].id]
    assert sum(report["channels_removed"].values()) > 0
    assert report["macs_after"] == count_macs(apply_plan(normalized, plan, shapes), shapes).total_macs
    assert report["macs_after"] < report["macs_before"]
    assert main(["inspect", str(path), "--plan", str(plan_path)]) == 0
    assert "plan: removes" in capsys.readouterr().out
