"""Models exported with a fixed batch (torch.onnx.export without dynamic_axes): batch 1 and 4.

Every method prunes them end to end through the CLI; the written model keeps the fixed batch,
passes the checker and is verified against onnxruntime by the run; inspect, apply and bench take
it; onnxruntime always sees calls of exactly the fixed batch (onnxprune.graph.batching).
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from onnxprune.calibration import load_calibration, split_holdout, teacher_outputs
from onnxprune.cli.main import main
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.batching import (
    fixed_batch,
    free_batch_constants,
    restore_batch_constants,
    run_in_slices,
    torch_batch_check,
    torch_in_slices,
)
from onnxprune.importing.importer import import_model
from onnxprune.measure.latency import measure_latency, resolve_batch
from onnxprune.run import gated as ci

# random data and one epoch: the collapse check (where there is one) would reject most results;
# it is not what these tests are about
FAST = ["--epochs", "1", "--batch-size", "8", "--quiet", "--holdout", "0.25",
        *(["--collapse-agreement", "0", "--collapse-error", "0"] if "collapse_agreement" in ci.NAMES else [])]
METHODS = {
    "magnitude": ["--sparsity", "0.5"],
    "lc": ["--sparsity", "0.5"],
    "ltp": ["--sparsity", "0.5"],
    "lagrangian": ["--target-macs", "0.6"],
    "bernoulli": ["--target-macs", "0.6"],
}


MODES = ("flat", "view", "expand")
OUTPUTS = {"flat": 4, "view": 4, "expand": 6}


class Net(nn.Module):
    """Conv-BN-ReLU, a residual Conv-BN, MaxPool, then a classifier:

    * ``flat``: on ``torch.flatten`` (exported as Flatten: any batch);
    * ``view``: on ``x.reshape(x.size(0), 256)`` (the exporter folds it into a Reshape to the
      constant [B, 256]: the batch is baked in, and the rewrite for training takes it out; the
      passes edit the 256 when channels go);
    * ``expand``: as flat, with ``extra.expand(x.size(0), 2)`` concatenated to the logits (an
      Expand to the constant [B, 2]: only the fixed batch runs, so it trains at B).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4 if mode == "view" else 16, 4)
        self.extra = nn.Parameter(torch.randn(1, 2))

    def forward(self, x):
        x = self.stem(x)
        x = self.pool(torch.relu(x + self.block(x)))
        if self.mode == "view":  # an explicit size: the passes edit the target when channels go
            return self.fc(x.reshape(x.size(0), 16 * 4 * 4))
        logits = self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
        if self.mode == "expand":
            return torch.cat([logits, self.extra.expand(x.size(0), -1)], 1)
        return logits


def export(path, batch: int, mode: str, seed: int = 0):
    torch.manual_seed(seed)
    net = Net(mode).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for bn in (net.stem[1], net.block[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(batch, 3, 8, 8),), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixed")
    out = {}
    for batch in (1, 4):
        for mode in MODES:
            out[batch, mode] = export(folder / f"{mode}_b{batch}.onnx", batch, mode)
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", image=rng.standard_normal((24, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 4, 24))
    np.savez(folder / "calib_odd.npz", image=rng.standard_normal((26, 3, 8, 8)).astype(np.float32))
    out["calib"], out["calib_odd"] = folder / "calib.npz", folder / "calib_odd.npz"
    return out


def test_the_exports_have_a_fixed_batch(models):
    for batch in (1, 4):
        for mode in MODES:
            model = onnx.load(str(models[batch, mode]))
            assert fixed_batch(model) == batch
            ops = {n.op_type for n in model.graph.node}
            assert ("Reshape" in ops) == (mode == "view") and ("Expand" in ops) == (mode == "expand")


def test_run_in_slices_feeds_exactly_the_fixed_batch(models):
    model = onnx.load(str(models[4, "view"]))
    x = np.random.default_rng(1).standard_normal((10, 3, 8, 8)).astype(np.float32)  # 2.5 batches
    out = run_in_slices(model, {"image": x})[0]
    assert out.shape == (10, 4)
    for start in range(0, 8, 4):  # whole batches agree with a plain call
        whole = run_in_slices(model, {"image": x[start:start + 4]})[0]
        np.testing.assert_array_equal(out[start:start + 4], whole)
    padded = np.concatenate([x[8:], x[8:]])  # the last slice was padded by repeating its rows
    np.testing.assert_allclose(out[8:], run_in_slices(model, {"image": padded})[0][:2], rtol=1e-6, atol=1e-6)


def test_the_torch_copy_trains_on_mini_batches_unless_a_constant_bakes_the_batch_in(models):
    for batch in (1, 4):
        flat = import_model(onnx.load(str(models[batch, "flat"])))
        ok, why = torch_batch_check(flat, batch)
        assert ok, why
        assert free_batch_constants(flat.onnx_model, batch, flat.input_shapes)[1] == []
        for mode in ("view", "expand"):
            baked = import_model(onnx.load(str(models[batch, mode])))
            ok, why = torch_batch_check(baked, batch)
            assert not ok and f"{2 * batch} samples" in why
            # evaluated at the fixed batch, the baked-in copy equals onnxruntime sample for sample
            x = np.random.default_rng(2).standard_normal((7, 3, 8, 8)).astype(np.float32)
            expected = run_in_slices(baked.onnx_model, {"image": x})[0]
            actual = torch_in_slices(baked.module.eval(), [x], torch.device("cpu"), fixed=batch)[0]
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
            freed, names = free_batch_constants(baked.onnx_model, batch, baked.input_shapes)
            assert bool(names) == (mode == "view")  # only a Reshape target is rewritten
            if names:  # the Reshape [B, 256] reads [0, 256]: the copy takes any batch
                ok, why = torch_batch_check(import_model(freed), batch)
                assert ok, why
                restored = restore_batch_constants(freed, names, batch)
                (reshape,) = [n for n in restored.graph.node if n.output[0] == names[0]]
                target = {i.name: numpy_helper.to_array(i) for i in restored.graph.initializer}[reshape.input[1]]
                assert target.tolist() == [batch, 256]


def test_calibration_counts_are_fitted_to_the_fixed_batch(models, caplog):
    model = onnx.load(str(models[4, "flat"]))
    with caplog.at_level(logging.WARNING):
        data = load_calibration(str(models["calib_odd"]), model)
    assert len(data) == 24 and "the last 2 are dropped" in caplog.text
    few = models["calib_odd"].with_name("few.npz")
    np.savez(few, image=np.zeros((3, 3, 8, 8), np.float32))
    with caplog.at_level(logging.WARNING):
        assert len(load_calibration(str(few), model)) == 4
    assert "padded to 4" in caplog.text
    train, hold = split_holdout(data, 0.1, multiple=4)
    assert (len(train), len(hold)) == (20, 4)
    assert len(teacher_outputs(model, hold)[0]) == 4
    assert len(load_calibration("synthetic", model)) % 4 == 0


def test_latency_is_measured_at_the_fixed_batch(models):
    model = onnx.load(str(models[4, "flat"]))
    feeds = {"image": np.zeros((1, 3, 8, 8), np.float32)}
    (stats,) = measure_latency([model], feeds, seconds=0, min_runs=3, warmup=1, threads=1)
    assert stats.batch == 4 and stats.throughput == pytest.approx(4 / (stats.mean_ms / 1e3))
    with pytest.raises(OnnxPruneError, match=r"--batch 2: m: input 'image' is \[4,3,8,8\], a fixed batch of 4"):
        resolve_batch([model], 2, "--batch", ["m"])
    with pytest.raises(OnnxPruneError, match="different fixed batches"):
        resolve_batch([model, onnx.load(str(models[1, "flat"]))], None)


def _check_written(path, batch: int, outputs: int = 4) -> onnx.ModelProto:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_value == batch  # still a drop-in replacement
    x = np.random.default_rng(3).standard_normal((2 * batch, 3, 8, 8)).astype(np.float32)
    assert run_in_slices(model, {"image": x})[0].shape == (2 * batch, outputs)
    return model


def _prune(models, tmp_path, batch, mode, method, calib=None, *extra):
    out, report = tmp_path / "small.onnx", tmp_path / "run.json"
    code = main([str(models[batch, mode]), "--method", method, *METHODS[method], "--calib",
                 calib or str(models["calib"]), "--out", str(out), "--report", str(report), *FAST, *extra])
    assert code == 0
    written = _check_written(out, batch, OUTPUTS[mode])
    targets = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    for node in written.graph.node:  # the Reshape trained batch-free reads the fixed batch again
        if node.op_type == "Reshape":
            assert int(targets[node.input[1]][0]) == batch
    data = json.loads(report.read_text())
    samples = data["calibration"]
    assert samples["fixed_batch"] == batch and samples["holdout"] % batch == 0
    # mini-batches unless an Expand bakes the batch in; the view export's Reshape is rewritten
    assert samples["torch_batch"] == (batch if mode == "expand" else None)
    assert bool(samples["batch_free_reshapes"]) == (mode == "view")
    return data


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("batch, mode", [(1, "flat"), (4, "view"), (4, "expand")])
def test_every_method_prunes_a_fixed_batch_export(models, tmp_path, method, batch, mode):
    _prune(models, tmp_path, batch, mode, method)


@pytest.mark.parametrize("batch, mode", [(1, "view"), (1, "expand"), (4, "flat")])
def test_the_other_paths_with_synthetic_data_and_a_latency_gate(models, tmp_path, batch, mode):
    data = _prune(models, tmp_path, batch, mode, "lagrangian", "synthetic",
                  "--max-latency-ms", "10000", "--latency-seconds", "0.1")
    assert data["latency"]["batch"] == batch  # the gate timed calls of the model's batch


@pytest.mark.parametrize("batch", [1, 4])
def test_inspect_apply_and_bench_take_fixed_batch_models(models, tmp_path, capsys, batch):
    original = models[batch, "view"]
    small = tmp_path / "small.onnx"
    assert main([str(original), "--method", "lagrangian", "--target-macs", "0.6", "--calib", str(models["calib"]),
                 "--out", str(small), *FAST]) == 0
    capsys.readouterr()
    for path in (original, small):
        assert main(["inspect", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["import_check"]["max_abs_error"] < 1e-4  # torch vs onnxruntime at the fixed batch
    applied = tmp_path / "applied.onnx"
    assert main(["apply", str(small), "--out", str(applied)]) == 0
    capsys.readouterr()
    _check_written(applied, batch)
    args = ["--seconds", "0", "--min-runs", "3", "--warmup", "1", "--threads", "1", "--json"]
    assert main(["bench", str(original), str(small), *args]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["batch"] for r in rows] == [batch, batch]
    assert rows[1]["macs"] < rows[0]["macs"]
    other = batch + 1
    assert main(["bench", str(original), str(small), "--batch", str(other), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--batch {other}:" in err and f"a fixed batch of {batch}" in err


def test_the_default_exporter_at_batch_1(tmp_path):
    """torch.onnx.export's default (dynamo) exporter writes flatten as Reshape(x, [1, 16]) with
    allowzero=1: rewritten to [0, 16] with allowzero=0 for training, written back as it was."""
    torch.manual_seed(0)
    path = tmp_path / "dynamo_b1.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Net("flat").eval(), (torch.randn(1, 3, 8, 8),), dynamo=True, verbose=False)
    program.save(str(path))
    model = onnx.load(str(path))
    (name,) = [value.name for value in model.graph.input]
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert fixed_batch(model) == 1 and reshapes and all(a.i == 1 for n in reshapes for a in n.attribute
                                                          if a.name == "allowzero")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", **{name: rng.standard_normal((16, 3, 8, 8)).astype(np.float32)})
    out, report = tmp_path / "small.onnx", tmp_path / "run.json"
    assert main([str(path), "--method", "lagrangian", "--target-macs", "0.6", "--calib", str(tmp_path / "calib.npz"),
                 "--out", str(out), "--report", str(report), *FAST]) == 0
    samples = json.loads(report.read_text())["calibration"]
    assert samples["torch_batch"] is None and samples["batch_free_reshapes"]  # mini-batches after the rewrite
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    targets = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    for node in written.graph.node:
        if node.op_type == "Reshape":
            assert int(targets[node.input[1]][0]) == 1
            assert [a.i for a in node.attribute if a.name == "allowzero"] == [1]
            assert all(p.key != "onnxprune.allowzero" for p in node.metadata_props)
