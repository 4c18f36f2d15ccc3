"""Bad input: one clear line on stderr, a non-zero exit, nothing written, the input untouched.

Runs the real command line in a subprocess, as a user (or a CI job) would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.support.models import SAMPLE_MODELS, make_tiny_conv

UNCONVERTIBLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) { h = Hardmax (x)  y = Relu (h) }
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected message fragment)."""
    good = make_tiny_conv()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.SerializeToString()[:150])
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello, I am a text file\n" * 20)
    unsupported = tmp_path / "hardmax.onnx"
    onnx.save(onnx.parser.parse_model(UNCONVERTIBLE), str(unsupported))
    return {
        "truncated": (truncated, "not a valid ONNX model"),
        "not_onnx": (not_onnx, "not a valid ONNX model"),
        "missing": (tmp_path / "absent.onnx", "no such file"),
        "unsupported_op": (unsupported, "Hardmax"),
    }


@pytest.mark.parametrize("case", ["truncated", "not_onnx", "missing", "unsupported_op"])
def test_inspect_bad_input(bad_inputs, case):
    path, fragment = bad_inputs[case]
    before = path.read_bytes() if path.exists() else None
    result = run_cli("inspect", str(path))
    assert_one_line_error(result, fragment)
    assert (path.read_bytes() if path.exists() else None) == before


@pytest.mark.parametrize("case", ["truncated", "not_onnx", "missing", "unsupported_op"])
def test_prune_bad_input_writes_nothing(bad_inputs, case, tmp_path):
    path, fragment = bad_inputs[case]
    before = path.read_bytes() if path.exists() else None
    out = tmp_path / "out.onnx"
    calib = SAMPLE_MODELS / "digits_train.npz"
    result = run_cli(str(path), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(calib), "--out", str(out))
    assert_one_line_error(result, fragment)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    assert (path.read_bytes() if path.exists() else None) == before


def test_out_equal_to_input_is_refused(tiny_conv_path):
    before = tiny_conv_path.read_bytes()
    calib = SAMPLE_MODELS / "digits_train.npz"
    result = run_cli(
        str(tiny_conv_path), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(calib),
        "--out", str(tiny_conv_path),
    )
    assert_one_line_error(result, "input")
    assert tiny_conv_path.read_bytes() == before


def test_apply_out_equal_to_input_is_refused(tiny_conv_path):
    before = tiny_conv_path.read_bytes()
    result = run_cli("apply", str(tiny_conv_path), "--out", str(tiny_conv_path))
    assert_one_line_error(result, "input")
    assert tiny_conv_path.read_bytes() == before
