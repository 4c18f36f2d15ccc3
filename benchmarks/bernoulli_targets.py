"""Bernoulli with --target-macs on the digits samples: where it lands, and how much training decided.

Per sample and target (9 epochs, batch 64, seed 0, distillation on the digits training split,
accuracy on the test split by onnxruntime, as in benchmarks/structured_table.py) one JSON row:
the written model's MACs fraction and its relative miss of the target (goal: within +-3%), the
share of the parameters (theta per unit, phi per residual layer) that training itself took to
0 (removed) or 1 (locked) before the last third rounds the rest (goal: >= 90%), theta's probed
start, the accuracy, and per pruning epoch the lowest expected MACs (the pace: how fast the
strength controller takes the model down).

    python benchmarks/bernoulli_targets.py [--models mlp,resnet,vgg,mobilenet] [--targets 0.5,0.25]
        [--pace-epochs N] [--unit-weights cost|auto] [--strength S] [--no-target]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from structured_harness import REPO, TrainConfig, prepare, prune, threads  # noqa: E402

from onnxprune.methods.bernoulli import Bernoulli  # noqa: E402

SHAPES = {"image": (1, 1, 8, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet,vgg,mobilenet")
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pace-epochs", type=int, default=None, help="the method's option [default: its own]")
    parser.add_argument("--unit-weights", default=None, help="the method's option [default: its own]")
    parser.add_argument("--strength", type=float, default=None, help="the method's option [default: its own]")
    parser.add_argument("--no-target", action="store_true", help="no --target-macs (one run per model at --strength)")
    args = parser.parse_args()
    threads(1)
    logging.basicConfig(level=logging.WARNING)
    for name in args.models.split(","):
        setup = prepare(REPO / "sample_models" / f"{name}.onnx", str(REPO / "sample_models/digits_train.npz"), SHAPES,
                        test=str(REPO / "sample_models/digits_test.npz"), seed=args.seed)
        for target in (["none"] if args.no_target else args.targets.split(",")):
            given = {"pace_epochs": args.pace_epochs, "unit_weights": args.unit_weights, "strength": args.strength}
            method = Bernoulli(target_macs=None if target == "none" else target,
                               **{k: v for k, v in given.items() if v is not None})
            result = prune(setup, method, TrainConfig(epochs=args.epochs, seed=args.seed, quiet=True))
            print(json.dumps({
                "model": name, "target": None if target == "none" else float(target),
                "macs_frac": round(result["macs_frac"], 4), "unit_weights": method.options.unit_weights,
                "miss": None if target == "none" else round(result["macs_frac"] / float(target) - 1, 4),
                "decided_before_rounding": round(method.decided_fraction, 4), "undecided": method.undecided,
                "parameters": sum(int(p.numel()) for p in method.params), "theta_start": method.init,
                "lock": round(method.lock, 4), "removed_layers": len(result["plan"].dropped_branches),
                "accuracy": result["accuracy"], "pace_epochs": method.pace_steps // max(result["ctx"].steps_per_epoch, 1),
                "expected_min_per_epoch": [round(h["macs_expected_min"], 3) for h in result["ctx"].history
                                           if "macs_expected_min" in h][:method.prune_epochs], "lr": result["ctx"].lr,
                "weights": {g: round(w, 3) for g, w in method.weights.items()}, "seconds": round(result["seconds"], 1)}),
                flush=True)


if __name__ == "__main__":
    main()
