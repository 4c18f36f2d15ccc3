"""Magnitude baseline on every sample model: held-out digits accuracy before and after pruning.

For each ``sample_models/*.onnx``: prune with ``--method magnitude`` at ``--sparsity`` (default
0.8), calibrating on ``digits_train.npz`` (its labels included, 10% held out for fidelity), then
measure the written model with onnxruntime on ``digits_test.npz``, which training never sees.

    python benchmarks/magnitude_table.py [--sparsity 0.8] [--epochs 30] [--models mlp,vgg] [--bn-train]

Prints one row per model: original and pruned test accuracy, the drop in points, nonzero
prunable weights left of the original's prunable weights, and wall time of the prune run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxprune.reporting.run_report import nonzero_weights
from onnxprune.run import pipeline
from onnxprune.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def accuracy(model: onnx.ModelProto, test: dict[str, np.ndarray]) -> float:
    logits = pipeline.run_batched(model, {"image": test["image"]})[0]
    return float((logits.argmax(1) == test["labels"]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--models", default="mlp,resnet,mobilenet,vgg,transformer")
    parser.add_argument("--bn-train", action="store_true", help="BatchNorm in train mode (default: frozen)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    test = dict(np.load(SAMPLES / "digits_test.npz"))
    header = f"{'model':<12} {'orig acc':>8} {'pruned':>8} {'drop':>6} {'nonzero (of prunable)':>24} {'time s':>7}"
    print(f"magnitude, sparsity {args.sparsity}, {args.epochs} epochs, lr {args.lr}, "
          f"BN {'train' if args.bn_train else 'frozen'}; accuracy on digits_test ({len(test['labels'])} images)")
    print(header)
    print("-" * len(header))
    drops = []
    for name in args.models.split(","):
        path = SAMPLES / f"{name}.onnx"
        if not path.exists():
            print(f"{name:<12} (missing)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = pipeline.run(pipeline.PruneConfig(
                model=path, out=Path(tmp) / "out.onnx", method="magnitude",
                method_options={"sparsity": args.sparsity}, calib=str(SAMPLES / "digits_train.npz"),
                train=TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, quiet=True, device="cpu",
                                  freeze_bn=not args.bn_train)))
            seconds = time.perf_counter() - start
            pruned = onnx.load(str(result.written))
        original = onnx.load(str(path))
        before, after = accuracy(original, test), accuracy(pruned, test)
        drops.append(before - after)
        nonzero, total = nonzero_weights(pruned)["nonzero"], nonzero_weights(original)["total"]
        print(f"{name:<12} {before:>8.2%} {after:>8.2%} {100 * (before - after):>6.2f} "
              f"{nonzero:>10,} of {total:>10,} {seconds:>7.1f}")
    if drops:
        print(f"worst drop: {100 * max(drops):.2f} points")


if __name__ == "__main__":
    main()
