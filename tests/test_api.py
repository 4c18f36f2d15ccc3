"""The Python API as a user calls it: prune a sample, inspect the result, apply a plan, bench both."""

from __future__ import annotations

import json

import onnx
import pytest

import onnxprune
from onnxprune.errors import OnnxPruneError
from tests.support.models import SAMPLE_MODELS


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("api")
    result = onnxprune.prune(SAMPLE_MODELS / "mlp.onnx", out_dir / "small.onnx", method="lagrangian",
                             calib=str(SAMPLE_MODELS / "digits_train.npz"), target_macs=0.5, epochs=3,
                             report=out_dir / "run.json", sparse_storage=False)
    return result, out_dir


def test_prune_writes_a_smaller_verified_model_and_its_report(pruned):
    result, out_dir = pruned
    assert result.accepted and result.written == out_dir / "small.onnx"
    written = onnx.load(str(result.written))
    assert written.SerializeToString() == result.model.SerializeToString()
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["onnxprune.method"] == "lagrangian"
    assert int(meta["onnxprune.macs_after"]) <= 0.52 * int(meta["onnxprune.macs_before"])
    report = json.loads((out_dir / "run.json").read_text())
    assert report["status"] == "accepted" and report["macs"] == result.report["macs"]
    assert [g.name for g in result.gates][0] == "--collapse-agreement"


def test_inspect_and_bench_see_the_pruned_model(pruned):
    result, out_dir = pruned
    seen = onnxprune.inspect(result.written)
    assert seen["total_macs"] == result.report["macs"]["after"]
    assert seen["import_check"]["max_abs_error"] < 1e-4
    rows = onnxprune.bench([SAMPLE_MODELS / "mlp.onnx", result.written], seconds=0.2, min_runs=5, warmup=1)
    assert [r["path"] for r in rows] == [str(SAMPLE_MODELS / "mlp.onnx"), str(result.written)]
    assert rows[0]["speedup"] == 1.0 and rows[1]["macs"] == seen["total_macs"]


def test_apply_removes_what_a_plan_names(tmp_path):
    groups = onnxprune.inspect(SAMPLE_MODELS / "mlp.onnx", import_check=False)["groups"]
    group = next(g for g in groups if g["prunable"])
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"kept": {group["id"]: list(range(group["size"] // 2))}}))
    applied = onnxprune.apply(SAMPLE_MODELS / "mlp.onnx", plan, tmp_path / "half.onnx")
    assert applied.written.exists() and applied.macs[1] < applied.macs[0]
    assert applied.params[1] < applied.params[0]
    onnx.checker.check_model(onnx.load(str(applied.written)), full_check=True)


def test_unknown_and_foreign_options_are_named(tmp_path):
    common = dict(method="lagrangian", calib=str(SAMPLE_MODELS / "digits_train.npz"))
    with pytest.raises(OnnxPruneError, match="unknown option.*target_mac\\b"):
        onnxprune.prune(SAMPLE_MODELS / "mlp.onnx", tmp_path / "a.onnx", target_mac=0.5, **common)
    with pytest.raises(OnnxPruneError, match="sparsity \\(an option of .*magnitude"):
        onnxprune.prune(SAMPLE_MODELS / "mlp.onnx", tmp_path / "a.onnx", sparsity=0.5, **common)
    assert not (tmp_path / "a.onnx").exists()
