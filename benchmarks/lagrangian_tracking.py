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


def subset(setup, n: int):
    """The first ``n`` training images (and their teacher outputs): fewer steps per epoch."""
    import dataclasses

    train = setup.train_set
    train = dataclasses.replace(train, inputs={k: v[:n] for k, v in train.inputs.items()},
                                labels=None if train.labels is None else train.labels[:n])
    return dataclasses.replace(setup, train_set=train, teacher_train=[t[:n] for t in setup.teacher_train])


def parse_set(pairs: list[str]) -> dict:
    """``name=value`` pairs as Lagrangian options (numbers as float, true/false as bool)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        lowered = value.lower()
        out[key.replace("-", "_")] = lowered == "true" if lowered in ("true", "false") else float(value)
    return out


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
    parser.add_argument("--n-train", type=int, default=None,
                        help="first N training images (1024 with --taper-epochs 1: a 16-step taper)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="another Lagrangian option, e.g. --set damping=40, or .attr=value for an attribute of "
                             "the method object (repeatable)")
    parser.add_argument("--trace-dir", default=None, help="write each run's per-step trace there as JSON")
    args = parser.parse_args()
    threads(1)
    logging.basicConfig(level=logging.WARNING)
    for name in args.models.split(","):
        setup = prepare(REPO / "sample_models" / f"{name}.onnx", str(REPO / "sample_models/digits_train.npz"), SHAPES,
                        test=str(REPO / "sample_models/digits_test.npz"), seed=args.seed)
        if args.n_train:
            setup = subset(setup, args.n_train)
        for target in args.targets.split(","):
            options = {k: v for k, v in (("damping", args.damping), ("dual_lr", args.dual_lr),
                                          ("taper_epochs", args.taper_epochs)) if v is not None}
            sets = parse_set(args.set)
            options.update({k: v for k, v in sets.items() if not k.startswith(".")})
            method = Lagrangian(target_macs=target, **options)
            for key, value in sets.items():  # ".name=value": an attribute of the method object
                if key.startswith("."):
                    setattr(method, key[1:], value)
            result = prune(setup, method, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, quiet=True))
            trace, warm = method.trace, method.taper.warmup
            after = trace[warm:method.taper.steps]  # the taper window, not the settle phase after it
            row = {"model": name, "target": float(target), **tracking_figures(method, after)}
            binding = [r for r in trace if r["budget"] > method.target / method.b0 + 1e-9]
            row.update({
                "steps": len(trace), "taper_steps": method.taper.steps, "warmup": warm,
                "lam_start": round(binding[warm]["lam"], 3) if len(binding) > warm else None,
                "lam_end": round(binding[-1]["lam"], 3) if binding else None,
                "rho": method.rho, "eta": method.dual_lr, "macs_frac": round(result["macs_frac"], 3),
                "accuracy": result["accuracy"], "seconds": round(result["seconds"], 1)})
            print(json.dumps(row), flush=True)
            if args.trace_dir:
                out = Path(args.trace_dir)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}_{target}.json").write_text(json.dumps(trace))


def tracking_figures(method, window: list[dict]) -> dict:
    """Over the window: max |h| as the step's penalty saw it (``h_step``: R of the step's gates
    minus the step's budget), max |R - B| after the step against the budget it aimed at (``h``,
    the figure reported before 2026-12-01), and the damping's share of the force on the scores,
    rho|h| / (|lam| + rho|h|) per step (median and 90th percentile)."""
    worst = max(window, key=lambda r: abs(r["h_step"]))
    shares = sorted(abs(r["damping_force"]) / max(abs(r["multiplier_force"]) + abs(r["damping_force"]), 1e-12)
                    for r in window)
    return {"max_abs_h": round(abs(worst["h_step"]), 4), "at_step": worst["step"],
            "at_budget": round(worst["budget"], 3), "max_abs_h_after_step": round(max(abs(r["h"]) for r in window), 4),
            "damping_share_median": round(shares[len(shares) // 2], 3),
            "damping_share_p90": round(shares[int(0.9 * len(shares))], 3)}


if __name__ == "__main__":
    main()
