"""The default collapse check: a collapsed model is never reported as success."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onnxprune.errors import GateFailedError
from onnxprune.run.acceptance import Gates, enforce, evaluate_gates

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def test_agreement_below_half_is_a_collapse_by_default():
    results = evaluate_gates(Gates(), {"pruned": {"top1_agreement": 0.083, "rel_error": 0.9}})
    assert [(r.name, r.passed) for r in results] == [("--collapse-agreement", False)]
    with pytest.raises(GateFailedError, match="collapsed.*--collapse-agreement 0 switches"):
        enforce(results)


def test_agreement_is_checked_before_rel_error_on_logits():
    # training rescales logits: high relative error with high agreement is no collapse
    results = evaluate_gates(Gates(), {"pruned": {"top1_agreement": 0.99, "rel_error": 0.46}})
    assert [r.passed for r in results] == [True]


def test_rel_error_decides_without_logits():
    assert not evaluate_gates(Gates(), {"pruned": {"rel_error": 0.8}})[0].passed
    assert evaluate_gates(Gates(), {"pruned": {"rel_error": 0.2}})[0].passed


def test_zero_switches_the_check_off():
    assert evaluate_gates(Gates(collapse_agreement=0, collapse_error=0), {"pruned": {"top1_agreement": 0.0}}) == []


def test_collapsed_run_exits_with_the_gate_code_and_writes_no_output(tmp_path):
    out = tmp_path / "small.onnx"
    argv = [sys.executable, "-m", "onnxprune", str(SAMPLES / "mlp.onnx"), "--method", "magnitude",
            "--sparsity", "0.995", "--calib", str(SAMPLES / "digits_train.npz"), "--epochs", "1",
            "--lr", "1e-6", "--quiet", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "collapsed" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    assert (tmp_path / "small.rejected.onnx").exists()  # kept for inspection, under another name

    done = subprocess.run([*argv, "--collapse-agreement", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.exists()
