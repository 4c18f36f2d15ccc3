"""The prune pipeline on real data: Fashion-MNIST (Debian package dataset-fashion-mnist).

A small CNN with BatchNorm is trained here on 6,000 real images, exported by the TorchScript
exporter (which folds BN into the convolutions, as shipped models are), then pruned by the CLI to
half its MACs with a few hundred labelled calibration images. The written model is measured by
onnxruntime on 1,000 test images it never saw. Skips when the data set is not installed; the full
real-model benchmark is ``benchmarks/real/`` (docs/real-models.md).
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _load(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
    with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def _cnn() -> torch.nn.Module:
    def block(cin: int, cout: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

    return torch.nn.Sequential(*block(1, 32), torch.nn.MaxPool2d(2), *block(32, 64), torch.nn.MaxPool2d(2),
                               *block(64, 64), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(64, 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = _load("train")
    xt, yt = _load("t10k")
    torch.manual_seed(0)
    model = _cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = np.random.default_rng(0).permutation(len(x))
    fit, calib = order[:6000], order[6000:6400]
    for epoch in range(3):
        model.train()
        for start in range(0, len(fit), 64):
            idx = fit[start:start + 64]
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.from_numpy(x[:1]),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "N"}})
    folder = tmp_path_factory.mktemp("fashion")
    (folder / "cnn.onnx").write_bytes(buffer.getvalue())
    np.savez(folder / "calib.npz", image=x[calib], labels=y[calib])
    return folder, xt[:1000], yt[:1000]


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"image": x})[0].argmax(1) == y).mean())


def test_exported_model_has_batchnorm_folded(trained):
    folder, x, y = trained
    ops = {node.op_type for node in onnx.load(str(folder / "cnn.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert _accuracy(folder / "cnn.onnx", x, y) > 0.7  # a real classifier, not chance (10%)


def test_lagrangian_at_half_the_macs_keeps_a_real_model_working(trained, tmp_path):
    folder, x, y = trained
    out = tmp_path / "small.onnx"
    argv = [sys.executable, "-m", "onnxprune", str(folder / "cnn.onnx"), "--method", "lagrangian",
            "--target-macs", "0.5", "--calib", str(folder / "calib.npz"), "--epochs", "4", "--batch-size", "32",
            "--quiet", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the collapse check passed: no exit 3
    original, pruned = _accuracy(folder / "cnn.onnx", x, y), _accuracy(out, x, y)
    macs = {p.key: float(p.value) for p in onnx.load(str(out)).metadata_props if p.key.startswith("onnxprune.macs")}
    assert macs["onnxprune.macs_after"] <= 0.52 * macs["onnxprune.macs_before"]
    assert pruned >= original - 0.10, (original, pruned)


def _model_a() -> tuple[Path, Path]:
    import os

    cache = Path(os.environ.get("ONNXPRUNE_REAL_CACHE", Path.home() / ".cache" / "onnxprune-real"))
    return cache / "fashion_mobilenet_v2_64_torchscript.onnx", cache / "fashion_calib_2000_labelled.npz"


@pytest.mark.skipif(not all(p.exists() for p in _model_a()),
                    reason="model (a) not built (python benchmarks/real/fashion.py, then benchmarks/real/method_grid.py)")
def test_lr_probe_rejects_the_rates_that_destroy_a_pretrained_mobilenet_v2():
    """Model (a) of docs/real-models.md (ImageNet MobileNetV2 fine-tuned to Fashion-MNIST, BN
    folded): Adam at 1e-3 for 10 steps on its own outputs goes 60% of the way to a constant
    output, 3e-4 12%; the probe takes 1e-4 (1.6%)."""
    from onnxprune.calibration import TaskLoss, load_calibration, output_kinds, teacher_outputs
    from onnxprune.calibration.data import CalibrationSet
    from onnxprune.importing.importer import import_model
    from onnxprune.training.loop import TrainConfig, _optimizer, _set_train_mode
    from onnxprune.training.lr_probe import probe_lr

    path, calib = _model_a()
    original = onnx.load(str(path))
    data = load_calibration(str(calib), original, {})
    data = CalibrationSet({k: v[:512] for k, v in data.inputs.items()}, None)
    teacher = teacher_outputs(original, data)
    module = import_model(original, {}).module
    torch.set_num_threads(2)
    result = probe_lr(module, [torch.from_numpy(v) for v in data.inputs.values()], [torch.from_numpy(teacher[0])],
                      TaskLoss(output_kinds(teacher)), lambda m, lr: _optimizer(TrainConfig(lr=lr), m, []),
                      lambda m: _set_train_mode(m, True), 32, 0, torch.device("cpu"))
    assert [t["lr"] for t in result.trials if not t["accepted"]][:2] == [1e-3, 3e-4], result.summary()
    assert result.trials[0]["fraction"] > 0.2 and result.lr <= 1e-4, result.summary()


def _real_benchmarks():
    """benchmarks/real on the path (its modules import each other by name)."""
    real = Path(__file__).resolve().parents[1] / "benchmarks" / "real"
    for folder in (str(real), str(real.parent)):
        if folder not in sys.path:
            sys.path.insert(0, folder)


@pytest.mark.skipif(not _model_a()[1].exists(),
                    reason="the grid's calibration images not cached (python benchmarks/real/method_grid.py --model fashion --labels --calib 2000 --eval 2000)")
def test_model_b_never_trains_on_the_grids_calibration_images():
    """Model (b) (benchmarks/real/fashion_resnet18.py) shares model (a)'s cached calibration file:
    that file is exactly the training-split images order[12000:14000] of fashion.split's
    permutation, and model (b)'s training indices avoid every one of them."""
    _real_benchmarks()
    from fashion import to_images
    from fashion_resnet18 import CALIB_SLICE, train_indices

    x, _ = _load("train")
    order = np.random.default_rng(0).permutation(len(x))
    calib = np.load(_model_a()[1])
    rebuilt = to_images((x[order[CALIB_SLICE][:200], 0] * 255).round().astype(np.uint8), 64)
    np.testing.assert_allclose(rebuilt, calib["image"][:200], atol=1e-5)
    assert not set(train_indices(len(x) - 2000).tolist()) & set(order[CALIB_SLICE].tolist())
    assert len(set(train_indices(12000).tolist())) == 12000


def _model_b() -> tuple[Path, Path]:
    folder = _model_a()[0].parent
    return folder / "fashion_resnet18_64_torchscript.onnx", folder / "fashion_resnet18_64_dynamo.onnx"


@pytest.mark.skipif(not all(p.exists() for p in _model_b()),
                    reason="model (b) not built (python benchmarks/real/fashion_resnet18.py)")
def test_model_b_exports_agree_and_score_their_stated_accuracy():
    """Both exports of model (b) give the same logits (atol 1e-4) on 32 test images, and the
    TorchScript export scores its stated test accuracy (metadata, all 10k images) within 5 points
    on the first 500 test images (the binomial spread of 500 images is about 1.6 points)."""
    _real_benchmarks()
    from fashion import to_images

    xt, yt = _load("t10k")
    x = to_images((xt[:500, 0] * 255).round().astype(np.uint8), 64)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in _model_b()]
    ts, dyn = (s.run(None, {"image": x[:32]})[0] for s in sessions)
    np.testing.assert_allclose(ts, dyn, atol=1e-4)
    stated = float({p.key: p.value for p in onnx.load(str(_model_b()[0])).metadata_props}["test_accuracy"])
    measured = float(np.mean(np.concatenate([sessions[0].run(None, {"image": x[i:i + 250]})[0].argmax(1)
                                             for i in range(0, 500, 250)]) == yt[:500]))
    assert abs(measured - stated) < 0.05, (measured, stated)
