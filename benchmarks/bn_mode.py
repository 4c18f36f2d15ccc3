"""BatchNorm during fine-tuning: frozen statistics (the loop's default) vs train mode.

The sample models have their BatchNorm folded into the convolutions by the exporter, so this
script trains its own small CNN with BatchNormalization kept as ONNX nodes (a 2-epoch digits
classifier, exported with constant folding off), then prunes it with magnitude at several
sparsities and calibration-set sizes, once with each BN mode, and prints test accuracy.

    python benchmarks/bn_mode.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from onnxprune.run import pipeline  # noqa: E402
from onnxprune.training.loop import TrainConfig  # noqa: E402
from tests.support.torch_models import fit_classifier  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def bn_cnn(train: dict[str, np.ndarray], path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 10))
    x, y = torch.from_numpy(train["image"]), torch.from_numpy(train["labels"])
    net = fit_classifier(net, x, y, epochs=8)
    torch.onnx.export(net, (x[:1],), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=17,
                      do_constant_folding=False)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    train, test = dict(np.load(SAMPLES / "digits_train.npz")), dict(np.load(SAMPLES / "digits_test.npz"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bn_cnn(train, tmp / "bn.onnx")
        assert "BatchNormalization" in {n.op_type for n in onnx.load(str(tmp / "bn.onnx")).graph.node}
        acc = lambda m: float((pipeline.run_batched(m, {"image": test["image"]})[0].argmax(1)  # noqa: E731
                               == test["labels"]).mean())
        print(f"BN CNN, original test accuracy {acc(onnx.load(str(tmp / 'bn.onnx'))):.2%}")
        print(f"{'calib':>6} {'sparsity':>8} {'BN frozen':>10} {'BN train':>10}")
        for n in (128, 1437):
            np.savez(tmp / "calib.npz", image=train["image"][:n], labels=train["labels"][:n])
            for sparsity in (0.8, 0.95):
                row = []
                for freeze in (True, False):
                    result = pipeline.run(pipeline.PruneConfig(
                        model=tmp / "bn.onnx", out=tmp / "out.onnx", method="magnitude",
                        method_options={"sparsity": sparsity}, calib=str(tmp / "calib.npz"),
                        train=TrainConfig(epochs=20, batch_size=32, quiet=True, device="cpu", freeze_bn=freeze)))
                    row.append(acc(result.model))
                print(f"{n:>6} {sparsity:>8} {row[0]:>10.2%} {row[1]:>10.2%}")


if __name__ == "__main__":
    main()
