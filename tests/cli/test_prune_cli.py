"""The prune command end to end through the real CLI, and every refusal it owes the user."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import onnx
import pytest

from onnxprune.cli.main import main
from onnxprune.graph.verify import run_onnxruntime

FAST = ["--epochs", "2", "--batch-size", "16", "--quiet"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def calib(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((48, 3, 8, 8)).astype(np.float32), labels=rng.integers(0, 4, 48))
    return path


def test_magnitude_end_to_end(tiny_conv_path, calib, tmp_path, capsys):
    before = _digest(tiny_conv_path)
    out, report = tmp_path / "out.onnx", tmp_path / "run.json"
    code = main([str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.8", "--calib", str(calib),
                 "--out", str(out), "--report", str(report), *FAST])
    assert code == 0
    assert _digest(tiny_conv_path) == before  # the input is never modified
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    prunable = np.concatenate([weights["w1"].ravel(), weights["w2"].ravel()])
    assert (prunable == 0).sum() == round(0.8 * prunable.size)  # global budget, exact
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxprune.method"] == "magnitude" and json.loads(meta["onnxprune.method_params"])["sparsity"] == 0.8
    assert int(meta["onnxprune.macs_before"]) > 0 and "onnxprune.params_after" in meta
    data = json.loads(report.read_text())
    assert data["prunable_weights"]["after"]["nonzero"] == prunable.size - round(0.8 * prunable.size)
    assert {layer["name"] for layer in data["layers"]} == {"w1", "w2"}
    assert data["calibration"]["train"] + data["calibration"]["holdout"] == 48
    assert data["calibration"]["loss"] == "kd+ce" and "accuracy" in data["pruned"]
    assert len(data["history"]) == 2
    assert data["options"]["sparsity"] == 0.8 and data["option_sources"]["sparsity"] == "command line"
    assert data["option_sources"]["lr"] == "default"
    printed = capsys.readouterr().out
    assert "MACs" in printed and "nonzero" in printed and "fidelity" in printed and "accuracy" in printed
    # the written model computes what its weights say: rerun it on fresh data
    feeds = {"x": np.ones((2, 3, 8, 8), np.float32)}
    assert run_onnxruntime(model, feeds)[0].shape == (2, 4)


def test_same_seed_same_output_bytes(tiny_conv_path, calib, tmp_path):
    outs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{name}.onnx"
        assert main([str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(calib),
                     "--out", str(out), "--seed", seed, "--device", "cpu", *FAST]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return ["--calib", str(path)]


@pytest.mark.parametrize("case, message", [
    ("wrong_shape", r"calibration input 'x' has shape \[8, 3, 4, 4\], expected float32 \[N,3,8,8\]"),
    ("wrong_dtype", r"calibration input 'x' has dtype int32, expected float32"),
    ("empty", r"calibration input 'x' is empty"),
    ("nan", r"calibration input 'x' holds 1 NaN/Inf values"),
    ("unknown_name", r"has input 'pixels', but the model's inputs are \['x'\]"),
    ("missing_calib", r"no calibration data: pass --calib data.npz"),
    ("synthetic_bad_shape", r"--input-shape names 'image', but the model's inputs are \['x'\]"),
])
def test_bad_calibration_is_refused(tiny_conv_path, tmp_path, capsys, case, message):
    good = np.zeros((8, 3, 8, 8), np.float32)
    nan = good.copy()
    nan[3, 1, 2, 2] = np.nan
    args = {
        "wrong_shape": lambda: _bad_npz(tmp_path, x=np.zeros((8, 3, 4, 4), np.float32)),
        "wrong_dtype": lambda: _bad_npz(tmp_path, x=good.astype(np.int32)),
        "empty": lambda: _bad_npz(tmp_path, x=good[:0]),
        "nan": lambda: _bad_npz(tmp_path, x=nan),
        "unknown_name": lambda: _bad_npz(tmp_path, pixels=good),
        "missing_calib": lambda: [],
        "synthetic_bad_shape": lambda: ["--calib", "synthetic", "--input-shape", "image=1x3x8x8"],
    }[case]()
    before = _digest(tiny_conv_path)
    out = tmp_path / "out.onnx"
    code = main([str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.5", "--out", str(out), *args, *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))
    assert _digest(tiny_conv_path) == before


def test_option_of_another_method_is_refused(tiny_conv_path, calib, tmp_path, capsys):
    code = main([str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(calib),
                 "--out", str(tmp_path / "o.onnx"), "--dual-lr", "3", *FAST])
    assert code == 2 and "--dual-lr does not apply to --method magnitude" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_magnitude_needs_sparsity_and_out_must_differ(tiny_conv_path, calib, tmp_path, capsys):
    assert main([str(tiny_conv_path), "--method", "magnitude", "--calib", str(calib),
                 "--out", str(tmp_path / "o.onnx"), *FAST]) == 2
    assert "--method magnitude needs --sparsity" in capsys.readouterr().err
    before = _digest(tiny_conv_path)
    assert main([str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(calib),
                 "--out", str(tiny_conv_path), *FAST]) == 2
    assert "is the input file" in capsys.readouterr().err and _digest(tiny_conv_path) == before


def test_divergence_stops_the_run_and_writes_nothing(tiny_conv_path, calib, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code = main([str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(calib),
                 "--out", str(out), "--optimizer", "sgd", "--lr", "1e30", *FAST])
    err = capsys.readouterr().err
    assert code == 4 and re.search(r"error: loss became (nan|inf) at epoch \d, step \d+; nothing was written", err)
    assert not out.exists()
