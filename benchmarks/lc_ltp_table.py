"""Held-out accuracy of gradual magnitude, LC and LTP at equal sparsity on every sample model.

Each run is the real prune pipeline (import, distillation training on ``digits_train.npz``,
write-back, dead-structure removal, onnxruntime verification); accuracy is then measured with
onnxruntime on ``digits_test.npz`` (never seen in training). Same epochs, lr and optimizer for
all three methods. Prints a Markdown table.

    python benchmarks/lc_ltp_table.py [--epochs 20] [--lr 3e-3] [--models mlp,resnet,...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from onnxprune.run import pipeline
from onnxprune.training.loop import TrainConfig

log = logging.getLogger("lc_ltp_table")
ROOT = Path(__file__).resolve().parents[1] / "sample_models"


def test_accuracy(model) -> float:
    data = np.load(ROOT / "digits_test.npz")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": data["image"]})[0]
    return float((logits.argmax(1) == data["labels"]).mean())


def prune(model: str, method: str, sparsity: float, epochs: int, lr: float, seed: int = 0):
    result = pipeline.run(pipeline.PruneConfig(
        model=ROOT / f"{model}.onnx", out=None, method=method, method_options={"sparsity": sparsity},
        calib=str(ROOT / "digits_train.npz"),
        train=TrainConfig(epochs=epochs, lr=lr, seed=seed, quiet=True, device="cpu")))
    return result.model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--models", default="mlp,resnet,mobilenet,vgg,transformer")
    parser.add_argument("--sparsities", default="0.9,0.95")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    import onnx

    print(f"epochs={args.epochs} lr={args.lr} optimizer=adam loss=kd+ce, test accuracy (%) on digits_test.npz\n")
    print("| model | original | sparsity | magnitude | LC | LTP |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in args.models.split(","):
        original = test_accuracy(onnx.load(ROOT / f"{model}.onnx"))
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            cells = []
            for method in ("magnitude", "lc", "ltp"):
                start = time.perf_counter()
                cells.append(f"{100 * test_accuracy(prune(model, method, sparsity, args.epochs, args.lr)):.1f}")
                log.warning("%s %s %.2f: %s%% (%.0f s)", model, method, sparsity, cells[-1],
                                time.perf_counter() - start)
            print(f"| {model} | {100 * original:.1f} | {100 * sparsity:.0f}% | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
