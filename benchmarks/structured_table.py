"""Structured methods on the CNN sample models: accuracy, MACs, params and CPU latency speedup.

For each model (resnet, mobilenet, vgg) and MAC target (50% and 25% of the original), each
method trains for the same number of epochs on the digits training split (distillation from the
original's onnxruntime outputs) and is scored on the held-out test split with onnxruntime:

    lagrangian           gates under a tapering MAC budget (the first half of the epochs), then the
                         fixed selection fine-tunes
    bernoulli            --target-macs drives its strength; its last third fine-tunes 0/1 gates
    magnitude-channels   global L2-norm channel ranking to the target, fine-tuned all epochs
    uniform-channels     the same fraction of every layer (largest norms), fine-tuned all epochs

The baselines are chosen before training and fine-tune for the whole budget, so they get at
least as much fine-tuning as the learned methods. Latency: onnxruntime CPU, 1 thread, batch 256
(``--latency-batch``; at batch 1 these tiny models time the runtime's per-call overhead),
all models of one family timed interleaved in one session (:func:`onnxprune.measure.latency.measure_latency`);
speedup = p50(original) / p50(pruned), and in brackets the same with the fastest call (min), which
a shared, busy machine disturbs least.

With ``--seeds N`` every run is repeated with seeds 0..N-1 (the seed changes the batch order and
the methods' random draws); the table shows the mean test accuracy and the mean relative output
error against the original on the test split (||student - teacher|| / ||teacher|| over the
logits: a finer fidelity measure than accuracy on 360 images, where one image is 0.28 points).
MACs, params and latency are those of the seed-0 model.

    python benchmarks/structured_table.py [--models resnet,vgg] [--targets 0.5,0.25] [--epochs 9]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))

from structured_harness import REPO, TrainConfig, prepare, prune, threads  # noqa: E402

from onnxprune.graph.macs import count_macs  # noqa: E402
from onnxprune.measure.latency import measure_latency  # noqa: E402
from onnxprune.methods._support.channel_baselines import MagnitudeChannels, UniformChannels  # noqa: E402
from onnxprune.methods.bernoulli import Bernoulli  # noqa: E402
from onnxprune.methods.lagrangian import Lagrangian  # noqa: E402

METHODS = {
    "lagrangian": Lagrangian,
    "bernoulli": Bernoulli,
    "magnitude-channels": MagnitudeChannels,
    "uniform-channels": UniformChannels,
}
SHAPES = {"image": (1, 1, 8, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,mobilenet,vgg")
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 0..N-1 and average")
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--latency-batch", type=int, default=256,
                        help="rows per timed call (at batch 1 these 8x8 models time onnxruntime's overhead)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    threads(1)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.models.split(","):
        path = REPO / "sample_models" / f"{name}.onnx"
        setup = prepare(path, str(REPO / "sample_models/digits_train.npz"), SHAPES,
                        test=str(REPO / "sample_models/digits_test.npz"))
        labels = setup.test_set.labels
        base_acc = float((setup.teacher_test[0].argmax(1) == labels).mean())
        base = count_macs(setup.original, SHAPES)
        rows.append({"model": name, "target": 1.0, "method": "original", "accuracy": base_acc, "rel_error": 0.0,
                     "macs": base.total_macs, "params": base.total_params})
        print(f"{name}: original accuracy {base_acc:.4f}, {base.total_macs} MACs, {base.total_params} params",
              flush=True)
        pruned, family = [], []
        for target in args.targets.split(","):
            for method_name in args.methods.split(","):
                runs = [prune(setup, METHODS[method_name](target_macs=target),
                              TrainConfig(epochs=args.epochs, seed=seed, quiet=True)) for seed in range(args.seeds)]
                result = runs[0]
                row = {"model": name, "target": float(target), "method": method_name,
                       "accuracy": mean(r["accuracy"] for r in runs), "accuracies": [r["accuracy"] for r in runs],
                       "rel_error": mean(r["rel_error"] for r in runs),
                       "macs": result["macs"], "macs_frac": result["macs_frac"],
                       "params": result["params"], "params_frac": result["params_frac"], "seconds": result["seconds"],
                       "dropped_branches": len(result["plan"].dropped_branches),
                       "channels": {g: len(k) for g, k in result["plan"].kept.items()}}
                pruned.append(result["pruned"])
                family.append(row)
                print(json.dumps(row), flush=True)
        # one interleaved session for the original and all its pruned versions: a busy period of
        # this shared machine then slows all of them alike
        stats = measure_latency([setup.original, *pruned], {"image": setup.test_set.inputs["image"][:1]}, threads=1,
                                seconds=args.latency_seconds * (1 + len(pruned)), batch=args.latency_batch)
        rows[-1].update(p50_ms=stats[0].p50_ms, min_ms=stats[0].min_ms)
        for row, st in zip(family, stats[1:]):
            row.update(p50_ms=st.p50_ms, min_ms=st.min_ms, speedup=stats[0].p50_ms / st.p50_ms,
                       speedup_min=stats[0].min_ms / st.min_ms)
            print(json.dumps({k: row[k] for k in ("model", "target", "method", "speedup", "speedup_min")}), flush=True)
        rows += family
    print()
    print(f"| model | target | method | accuracy (mean of {args.seeds}) | rel. output error | MACs (frac) | params (frac) "
          "| removed blocks | CPU speedup p50 (min) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        frac = lambda k: f" ({r[k + '_frac']:.3f})" if k + "_frac" in r else ""  # noqa: E731
        print(f"| {r['model']} | {r['target']:g} | {r['method']} | {100 * r['accuracy']:.2f} | {r['rel_error']:.3f} "
              f"| {r['macs']}{frac('macs')} "
              f"| {r['params']}{frac('params')} | {r.get('dropped_branches', '')} | "
              f"{r.get('speedup', 1.0):.2f}x ({r.get('speedup_min', 1.0):.2f}x) |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
