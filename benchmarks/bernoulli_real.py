"""Bernoulli on real model (a) (the pretrained MobileNetV2 on Fashion-MNIST at 64 px): the share of
theta/phi decided before rounding, the MACs against the target, the accuracy, the unit weights.

The run is method_grid.py's (``--model fashion --labels --calib 2000 --eval 2000 --epochs 3``,
batch 32, lr probed, kd+ce) with the Bernoulli options given here, in this process:

    python benchmarks/bernoulli_real.py [--target 0.5] [--unit-weights cost|auto] [--threads 1]

One JSON row. Needs the cached model and data (benchmarks/real/fashion.py); skips without them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "real"), str(HERE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="0.5")
    parser.add_argument("--unit-weights", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from assets import AssetMissing, cache_dir

    model = cache_dir() / "fashion_mobilenet_v2_64_torchscript.onnx"
    calib, test = cache_dir() / "fashion_calib_2000_labelled.npz", cache_dir() / "fashion_test_2000.npz"
    if not all(p.exists() for p in (model, calib, test)):
        sys.exit(f"skipped: {AssetMissing.__name__}: model (a) or its data is not in {cache_dir()}")
    import torch
    from structured_harness import prepare, prune

    from onnxprune.methods.bernoulli import Bernoulli
    from onnxprune.training.loop import TrainConfig

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    setup = prepare(model, str(calib), {}, test=str(test))
    options = {"target_macs": args.target, **({"unit_weights": args.unit_weights} if args.unit_weights else {})}
    method = Bernoulli(**options)
    result = prune(setup, method, TrainConfig(epochs=args.epochs, batch_size=32, seed=args.seed, quiet=True))
    history = result["ctx"].history
    print(json.dumps({
        "model": "fashion_mobilenet_v2_64", "target": float(args.target), "unit_weights": method.options.unit_weights,
        "accuracy": result["accuracy"], "macs_frac": round(result["macs_frac"], 4),
        "miss": round(result["macs_frac"] / float(args.target) - 1, 4),
        "decided_before_rounding": round(method.decided_fraction, 4), "undecided": method.undecided,
        "held_at_eps": method.at_floor, "parameters": sum(int(p.numel()) for p in method.params),
        "theta_start": method.init, "lr": result["ctx"].lr,
        "expected_min_per_epoch": [round(h["macs_expected_min"], 3) for h in history if "macs_expected_min" in h],
        "strength_per_epoch": [round(h["strength"], 3) for h in history if "strength" in h],
        "weights": {g: round(w, 3) for g, w in method.weights.items()},
        "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
