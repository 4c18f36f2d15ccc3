"""Lagrangian constraint tracking along the taper: max |R - B| / B0 after warm-up per model and target.

"Along the taper": the steps of the taper window after its warm-up (the settle phase after it
holds the budget at the target while the gates harden). Same settings as benchmarks/structured_table.py (digits training split, 9 epochs, batch 64,
seed 0); prints one JSON row per run (max |h| after warm-up, lambda at the start and end of the
binding phase, final MACs and accuracy).

    python benchmarks/lagrangian_tracking.py [--models mlp,resnet,vgg,mobilenet] [--targets 0.5,0.25]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from structured_harness import REPO, TrainConfig, prepare, prune, threads  # noqa: E402

from onnxprune.methods.lagrangian import Lagrangian  # noqa: E402

SHAPES = {"image": (1, 1, 8, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet,vgg,mobilenet")
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damping", type=float, default=None, help="rho [default: the method's]")
    parser.add_argument("--dual-lr", type=float, default=None, help="eta [default: the method's]")
    parser.add_argument("--taper-epochs", type=int, default=None)
    args = parser.parse_args()
    threads(1)
    logging.basicConfig(level=logging.WARNING)
    for name in args.models.split(","):
        setup = prepare(REPO / "sample_models" / f"{name}.onnx", str(REPO / "sample_models/digits_train.npz"), SHAPES,
                        test=str(REPO / "sample_models/digits_test.npz"), seed=args.seed)
        for target in args.targets.split(","):
            options = {k: v for k, v in (("damping", args.damping), ("dual_lr", args.dual_lr),
                                          ("taper_epochs", args.taper_epochs)) if v is not None}
            method = Lagrangian(target_macs=target, **options)
            result = prune(setup, method, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, quiet=True))
            trace, warm = method.trace, method.taper.warmup
            after = trace[warm:method.taper.steps]  # the taper window, not the settle phase after it
            worst = max(after, key=lambda r: abs(r["h"]))
            binding = [r for r in trace if r["budget"] > method.target / method.b0 + 1e-9]
            # the damping's share of the force on the scores, rho|h| / (|lam| + rho|h|), over the window
            shares = sorted(abs(r["damping_force"]) / max(abs(r["multiplier_force"]) + abs(r["damping_force"]), 1e-12)
                            for r in after)
            print(json.dumps({
                "model": name, "target": float(target), "max_abs_h": round(abs(worst["h"]), 4),
                "at_step": worst["step"], "at_budget": round(worst["budget"], 3), "steps": len(trace),
                "lam_start": round(binding[warm]["lam"], 3) if len(binding) > warm else None,
                "lam_end": round(binding[-1]["lam"], 3),
                "damping_share_median": round(shares[len(shares) // 2], 3), "damping_share_p90": round(shares[int(0.9 * len(shares))], 3),
                "rho": method.rho, "eta": method.dual_lr, "macs_frac": round(result["macs_frac"], 3),
                "accuracy": result["accuracy"], "seconds": round(result["seconds"], 1)}), flush=True)


if __name__ == "__main__":
    main()
