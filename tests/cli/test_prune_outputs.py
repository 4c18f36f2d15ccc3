"""What the prune command writes for weight-level methods: the latency note, --sparse-storage."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxprune.cli.main import main
from onnxprune.graph.verify import run_onnxruntime
from tests.support.models import SAMPLE_MODELS


def prune_mlp(tmp_path, name, *extra):
    out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
    args = [str(SAMPLE_MODELS / "mlp.onnx"), "--method", "magnitude", "--sparsity", "0.9", "--epochs", "2",
            "--calib", str(SAMPLE_MODELS / "digits_train.npz"), "--quiet", "--out", str(out),
            "--report", str(report), *extra]
    assert main(args) == 0
    return out, json.loads(report.read_text())


def test_sparse_storage_shrinks_the_file_and_computes_the_same(tmp_path, capsys):
    dense, dense_report = prune_mlp(tmp_path, "dense", "--latency-seconds", "0")
    sparse, _ = prune_mlp(tmp_path, "sparse", "--sparse-storage", "--latency-seconds", "0")
    assert sparse.stat().st_size < dense.stat().st_size / 2.5
    model = onnx.load(str(sparse))
    onnx.checker.check_model(model, full_check=True)
    assert any(node.op_type == "Constant" and node.attribute[0].name == "sparse_value" for node in model.graph.node)
    x = np.load(SAMPLE_MODELS / "digits_test.npz")["image"][:64]
    np.testing.assert_allclose(run_onnxruntime(sparse, {"image": x})[0], run_onnxruntime(dense, {"image": x})[0],
                               atol=1e-5, rtol=1e-4)
    assert dense_report["unstructured"] is True


def test_weight_level_summary_shows_latency_and_says_zeros_do_not_speed_up(tmp_path, capsys):
    prune_mlp(tmp_path, "timed")
    out = capsys.readouterr().out
    assert "latency" in out and "ms p50" in out
    assert "scattered zeros do not make dense runtimes" in out


def test_config_file_first_routes_to_prune(tmp_path):
    """`onnxprune --config prune.toml IN.onnx --out OUT.onnx`: the file's options, the default command."""
    config = tmp_path / "prune.toml"
    config.write_text(f'method = "magnitude"\nsparsity = 0.5\nepochs = 1\nquiet = true\n'
                      f'calib = "{SAMPLE_MODELS / "digits_train.npz"}"\n')
    out, report = tmp_path / "out.onnx", tmp_path / "run.json"
    assert main(["--config", str(config), str(SAMPLE_MODELS / "mlp.onnx"), "--out", str(out),
                 "--report", str(report), "--latency-seconds", "0"]) == 0
    data = json.loads(report.read_text())
    assert data["method"] == "magnitude" and data["option_sources"]["sparsity"] == "config"
