"""`onnxprune IN.onnx --calib images/`: a folder of PNGs (class sub-folders = labels) calibrates a
real prune run; a corrupt image is skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import torch
from torchvision.io import encode_png

from onnxprune.cli.main import main
from tests.support.models import SAMPLE_MODELS


def write_digit_folder(root, per_class: int = 12):
    data = np.load(SAMPLE_MODELS / "digits_train.npz")
    images, labels = data["image"], data["labels"]
    for digit in range(10):
        folder = root / f"class_{digit}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            pixels = torch.from_numpy((images[index] * 255).round().astype(np.uint8))
            (folder / f"{i}.png").write_bytes(encode_png(pixels).numpy().tobytes())
    (root / "class_3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_prune_with_image_folder(tmp_path, caplog):
    images = tmp_path / "images"
    write_digit_folder(images)
    out, report = tmp_path / "out.onnx", tmp_path / "run.json"
    code = main([
        str(SAMPLE_MODELS / "mlp.onnx"), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(images),
        "--epochs", "2", "--quiet", "--out", str(out), "--report", str(report),
    ])
    assert code == 0 and out.exists()
    data = json.loads(report.read_text())
    assert data["calibration"]["train"] + data["calibration"]["holdout"] == 120
    # the folder names became labels: accuracy is measured, and the images match the digits data
    assert "accuracy" in data["pruned"]
    assert data["pruned"]["accuracy"] > 0.8
    assert any("1 of 121 images skipped" in r.getMessage() and "broken.png" in r.getMessage() for r in caplog.records)
