"""External data in and out (issue 14 item 7).

A small MLP saved with its weights in ``mlp.data`` beside ``mlp.onnx``:

- ``apply`` and ``prune`` write ``OUT.onnx`` with ``OUT.onnx.data`` beside it (and nothing
  else), the output passes the checker and onnxruntime on it equals the masked reference; the
  input files are byte for byte unchanged;
- a model over protobuf's limit is written with external data (the limit lowered for the test:
  the rule, not a 2 GB file, is what is tested here; benchmarks/external_data_rss.py runs a real one);
- Ctrl-C between the renames leaves neither file; an existing ``OUT.onnx.data`` that is a folder is
  refused before any work;
- a location escaping the model's folder, an absolute location and a missing data file are one
  ``error:`` line each.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import numpy_helper
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from onnxprune.cli.main import main
from onnxprune.graph import sessions
from onnxprune.graph.modelio import load_model, save_model_atomic, stores_external_data
from tests.support.models import SAMPLE_MODELS
from tests.support.processes import default_sigint


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _external_mlp(folder: Path, location: str = "mlp.data") -> Path:
    """The mlp sample with every tensor in ``mlp.data``; then its location set to ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlp.onnx"
    onnx.save(onnx.load(str(SAMPLE_MODELS / "mlp.onnx")), str(path), save_as_external_data=True,
              location="mlp.data", size_threshold=0)
    if location != "mlp.data":
        header = onnx.load(str(path), load_external_data=False)
        for tensor in _get_all_tensors(header):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(header, str(path))
    return path


def _header_external(path: Path) -> bool:
    header = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in _get_all_tensors(header))


def _masked_reference(model: onnx.ModelProto, kept: dict[str, list[int]], x: np.ndarray) -> np.ndarray:
    """The unpruned model (Gemm transB=1 + Relu MLP) with the removed hidden units zeroed: their
    weight rows and biases are 0, so after the Relu they are 0, as pruned units are absent."""
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    weights = {t.name: t for t in masked.graph.initializer}
    for group, keep in kept.items():  # a group is named after its producing Gemm's weight
        node = next(n for n in masked.graph.node if n.op_type == "Gemm" and n.input[1] == group)
        for name in node.input[1:]:
            values = numpy_helper.to_array(weights[name]).copy()
            values[np.setdiff1d(np.arange(values.shape[0]), keep)] = 0
            weights[name].CopyFrom(numpy_helper.from_array(values, name))
    return onnx.reference.ReferenceEvaluator(masked).run(None, {masked.graph.input[0].name: x})[0]


def _plan(model_path: Path, folder: Path) -> tuple[Path, dict[str, list[int]]]:
    from onnxprune import api

    groups = [g for g in api.inspect(model_path, import_check=False)["groups"] if g["prunable"]]
    assert groups
    kept = {g["id"]: list(range(0, g["size"], 2)) for g in groups}  # every other unit
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"kept": kept}))
    return plan, kept


def _input(model: onnx.ModelProto) -> np.ndarray:
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal(dims).astype(np.float32)


def test_apply_writes_external_data_beside_the_output(tmp_path, capsys):
    source = _external_mlp(tmp_path / "in")
    plan, kept = _plan(source, tmp_path)
    before = _tree(tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["apply", str(source), "--plan", str(plan), "--out", str(out_dir / "small.onnx")]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["small.onnx", "small.onnx.data"]
    assert _header_external(out_dir / "small.onnx")
    assert _tree(tmp_path / "in") == before  # the input untouched
    pruned = load_model(out_dir / "small.onnx")  # the checker runs on load
    original = load_model(source)
    assert count(pruned) < count(original)
    x = _input(original)
    got = sessions.make_session(out_dir / "small.onnx").run(None, {original.graph.input[0].name: x})[0]
    np.testing.assert_allclose(got, _masked_reference(original, kept, x), atol=1e-5, rtol=1e-4)


def count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_prune_writes_external_data_beside_the_output(tmp_path, capsys):
    source = _external_mlp(tmp_path / "in")
    before = _tree(tmp_path / "in")
    data = np.load(SAMPLE_MODELS / "digits_train.npz")
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=data["image"][:64], labels=data["labels"][:64])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["prune", str(source), "--method", "magnitude", "--sparsity", "0.5", "--epochs", "1",
                 "--calib", str(calib), "--lr", "1e-3", "--latency-seconds", "0", "--collapse-agreement", "0",
                 "--quiet", "--out", str(out_dir / "small.onnx")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["small.onnx", "small.onnx.data"]
    assert _header_external(out_dir / "small.onnx")
    assert _tree(tmp_path / "in") == before
    pruned = load_model(out_dir / "small.onnx")
    weights = [numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros >= 0.45  # the magnitude sparsity, so the weights written are the pruned ones
    x = data["image"][:4]
    got = sessions.make_session(out_dir / "small.onnx").run(None, {"image": x})[0]
    np.testing.assert_allclose(got, onnx.reference.ReferenceEvaluator(pruned).run(None, {"image": x})[0],
                               atol=1e-5, rtol=1e-4)


def test_a_model_over_the_protobuf_limit_is_written_with_external_data(tmp_path, monkeypatch):
    """An inline input whose pruned model is 'over the limit' (lowered to 1 KiB here)."""
    model = onnx.load(str(SAMPLE_MODELS / "mlp.onnx"))
    monkeypatch.setattr(sessions, "PROTO_LIMIT", 1024)
    out = save_model_atomic(model, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert _header_external(out)
    # the caller's model keeps its weights inline, whole
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    for tensor, again in zip(model.graph.initializer, load_model(out).graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), numpy_helper.to_array(again))
    monkeypatch.undo()
    save_model_atomic(model, tmp_path / "small.onnx")  # under the limit, an inline input: one file
    assert not (tmp_path / "small.onnx.data").exists() and not stores_external_data(tmp_path / "small.onnx")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, preexec_fn=default_sigint)


def test_ctrl_c_between_the_renames_leaves_neither_file(tmp_path):
    """The data file is part of the run's one transaction: staged beside its target, renamed with
    the model, and undone with it (an earlier OUT.onnx.data comes back unchanged)."""
    source = _external_mlp(tmp_path / "in")
    plan, _ = _plan(source, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "small.onnx.data").write_bytes(b"an earlier run's data")
    before = _tree(tmp_path)
    proc = _cli("apply", str(source), "--plan", str(plan), "--out", str(out_dir / "small.onnx"),
                env={"ONNXPRUNE_FAULT_AT": "mid-commit"})
    assert proc.returncode == 130, proc.stderr
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["small.onnx.data"]  # no temporary folder left


def _one_error_line(stderr: str, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert fragment in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("location,fragment", [
    ("../outside.data", "outside the model's folder"),
    ("ABSOLUTE", "outside the model's folder"),
    ("missing.data", "external data file missing"),
], ids=["escapes", "absolute", "missing"])
def test_bad_external_data_is_one_error_line(tmp_path, capsys, location, fragment):
    folder = tmp_path / "in"
    source = _external_mlp(folder, str(folder / "mlp.data") if location == "ABSOLUTE" else location)
    (tmp_path / "outside.data").write_bytes((folder / "mlp.data").read_bytes())  # a real file, still refused
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(["apply", str(source), "--out", str(tmp_path / "small.onnx")])
    assert code != 0
    _one_error_line(capsys.readouterr().err, fragment)
    assert _tree(tmp_path) == before


def test_an_existing_data_path_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    source = _external_mlp(tmp_path / "in")
    (tmp_path / "small.onnx.data").mkdir()
    capsys.readouterr()
    code = main(["apply", str(source), "--out", str(tmp_path / "small.onnx")])
    assert code != 0
    _one_error_line(capsys.readouterr().err, "small.onnx.data")
    assert not (tmp_path / "small.onnx").exists()
