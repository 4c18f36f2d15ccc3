"""Bernoulli with and without compaction: per epoch the expected MACs, the MACs of the model
actually trained and the epoch's wall time; the final result of both runs.

Runs ``--method bernoulli`` on the ResNet digits sample (distillation on the 1,437 training
digits, test accuracy on the 360 held-out ones by onnxruntime) and on torchvision's resnet18
(random weights, exported at ``--size`` px, seeded Gaussian calibration images; accuracy is
top-1 agreement and relative output error against the original on a holdout; a random network's
argmax on noise is not recovered in a few epochs, so agreement says little there), each with
``compact`` on and off, same seed.
An epoch's time is its training steps only (first step to end of epoch, 1 thread); the
compaction that follows an epoch is timed separately.

    python benchmarks/bernoulli_compaction.py [--models resnet,resnet18] [--epochs 9] [--target none]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from structured_harness import REPO, TrainConfig, prepare, prune, threads  # noqa: E402
from structured_sweep import export  # noqa: E402

from onnxprune.methods.bernoulli import Bernoulli  # noqa: E402


class TimedBernoulli(Bernoulli):
    """Bernoulli that records each epoch's training time (first step to end of epoch)."""

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.epoch_seconds: list[float] = []
        self._started = None

    def before_step(self, ctx) -> None:
        if self._started is None:
            self._started = time.perf_counter()
        super().before_step(ctx)

    def end_epoch(self, ctx) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._started)
        self._started = None
        super().end_epoch(ctx)


def one_run(setup, compact: bool, args) -> dict:
    options = {"compact": compact, "strength": args.strength}
    if args.target != "none":
        options["target_macs"] = args.target
    method = TimedBernoulli(**options)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, quiet=True)
    result = prune(setup, method, config)
    result["epoch_seconds"] = method.epoch_seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,resnet18")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--strength", type=float, default=10.0)
    parser.add_argument("--target", default="none", help="--target-macs (fraction), or none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="torchvision input size")
    parser.add_argument("--samples", type=int, default=512, help="torchvision calibration images")
    args = parser.parse_args()
    threads(1)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name in ("resnet", "mobilenet", "vgg", "transformer", "mlp"):
                setup = prepare(REPO / "sample_models" / f"{name}.onnx", str(REPO / "sample_models/digits_train.npz"),
                                {"image": (1, 1, 8, 8)}, test=str(REPO / "sample_models/digits_test.npz"),
                                seed=args.seed)
                metric = "accuracy"
            else:
                images = np.random.default_rng(0).normal(size=(args.samples, 3, args.size, args.size))
                np.savez(Path(tmp) / "calib.npz", input=images.astype(np.float32))
                setup = prepare(export(name, args.size, Path(tmp)), str(Path(tmp) / "calib.npz"),
                                {"input": (1, 3, args.size, args.size)}, holdout=0.125, seed=args.seed)
                metric = "agreement"
            runs = {compact: one_run(setup, compact, args) for compact in (True, False)}
            print(f"\n{name}: bernoulli strength {args.strength}, target {args.target}, {args.epochs} epochs")
            print("| epoch | expected MACs | trained MACs (on) | epoch s (on) | epoch s (off) | compaction s |")
            print("| --- | --- | --- | --- | --- | --- |")
            on, off = runs[True], runs[False]
            for i, (h, h_off) in enumerate(zip(on["ctx"].history, off["ctx"].history)):
                compaction = f"{h['compact_seconds']:.2f}" if "compact_seconds" in h else ""
                print(f"| {i + 1} | {h.get('macs_expected', 1.0):.3f} | {h['macs_trained']:.3f} | "
                      f"{on['epoch_seconds'][i]:.2f} | {off['epoch_seconds'][i]:.2f} | {compaction} |")
            for compact, r in runs.items():
                total = sum(r["epoch_seconds"]) + sum(h.get("compact_seconds", 0.0) for h in r["ctx"].history)
                print(f"compact {'on ' if compact else 'off'}: {metric} {r[metric]:.4f}, rel. output error "
                      f"{r.get('rel_error') or float('nan'):.3f}, MACs {r['macs_frac']:.3f}, "
                      f"params {r['params_frac']:.3f}, removed layers {len(r['plan'].dropped_branches)}, "
                      f"training {total:.1f} s (epochs + compactions), run {r['seconds']:.1f} s")
            same = on["plan"].kept == off["plan"].kept and on["plan"].dropped_branches == off["plan"].dropped_branches
            print(f"same plan: {same}")


if __name__ == "__main__":
    main()
