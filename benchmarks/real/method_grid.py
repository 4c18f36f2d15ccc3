"""Models (c), (a) and (b) of the real benchmark, every method at equal MACs, data and epochs.

Model (c), the default: the ImageNet MobileNetV2 itself, label-free, on real photos.
Model (a), ``--model fashion``: the same network fine-tuned on Fashion-MNIST at 64 px
(:mod:`fashion`), calibrated on training images it was not fine-tuned on, tested on the test split.
Model (b), ``--model fashion-resnet18``: a ResNet-18 trained from scratch on Fashion-MNIST at 64 px
(:mod:`fashion_resnet18`), with model (a)'s calibration and test images (it never trained on them).

    python benchmarks/real/method_grid.py [--model imagenet|fashion|fashion-resnet18] [--labels] [--target 0.5]
        [--calib 512] [--eval 256] [--epochs 3] [--lr 1e-5] [--methods uniform,magnitude,lagrangian]
        [--seed N] [--sparsity S (weight granularity)] [--latency-table T] [--option KEY=JSON] [--device cuda]

Calibration: random-resized 224 px crops of one half of the real photos (Debian opencv-doc and
python3-skimage, split by a hash of the file name); evaluation: crops of the other half, never
trained on. Loss: distillation from the original's logits (no labels). Every method gets the same
data, epochs, batch and learning rate, and the same export (gates folded, channels removed by
the passes, the result checked and verified against the trained torch model by onnxruntime).

Printed per method: top-1 agreement and top-5 overlap with the original on the evaluation crops,
the number of distinct top-1 classes (a collapsed model answers one class), MACs and params
fractions, prune wall time and peak RSS (each method runs in its own process). ``uniform`` and
``magnitude`` are the channel baselines of :mod:`onnxprune.methods._support.channel_baselines`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from assets import AssetMissing, cache_dir, photo_crops, photo_paths, split_photos  # noqa: E402


def crops(calib: int, evaluate: int) -> tuple[Path, Path]:
    """The calibration and evaluation crops as .npz files in the cache (built once)."""
    train_path, eval_path = cache_dir() / f"photos_calib_{calib}.npz", cache_dir() / f"photos_eval_{evaluate}.npz"
    if not (train_path.exists() and eval_path.exists()):
        train_photos, eval_photos = split_photos(photo_paths())
        np.savez(train_path, image=photo_crops(train_photos, calib, seed=0))
        np.savez(eval_path, image=photo_crops(eval_photos, evaluate, seed=1))
    return train_path, eval_path


def fashion_data(calib: int, test: int, labels: bool) -> tuple[Path, Path]:
    """Model (a)'s calibration images (after the ones it was fine-tuned on) and test images."""
    from fashion import split

    suffix = "labelled" if labels else "unlabelled"
    train_path, test_path = cache_dir() / f"fashion_calib_{calib}_{suffix}.npz", cache_dir() / f"fashion_test_{test}.npz"
    if not (train_path.exists() and test_path.exists()):
        _, (xc, yc), (xt, yt) = split(64, 12000, calib, test)
        np.savez(train_path, image=xc, **({"labels": yc} if labels else {}))
        np.savez(test_path, image=xt, labels=yt)
    return train_path, test_path


def make_method(name: str, target: float, batchnorm: bool = False, latency_table: str | None = None,
                sparsity: float | None = None, extra: dict | None = None):
    from onnxprune.methods._support.channel_baselines import MagnitudeChannels, UniformChannels
    from onnxprune.methods.base import registry

    if sparsity is not None:  # weight granularity: magnitude, lc and ltp at one global sparsity
        return registry()[name](sparsity=sparsity, **({} if name == "magnitude" else {"granularity": "weight"}),
                                **(extra or {}))

    baselines = {"uniform": UniformChannels, "magnitude": MagnitudeChannels}
    if name in baselines:
        return baselines[name](target_macs=str(target), batchnorm=batchnorm)
    options = {"target_macs": str(target)}
    if name == "lagrangian":
        options["batchnorm"] = batchnorm
        if latency_table:  # the budget becomes the table's predicted latency, target x the full width's
            options["latency_table"] = latency_table
    if name in ("lc", "ltp"):  # no MAC target: a channel sparsity s keeps about (1 - s)^2 of a conv chain's MACs
        options = {"granularity": "channel", "sparsity": round(1 - target ** 0.5, 4)}
    return registry()[name](**options, **(extra or {}))


def run_one(args) -> dict:
    import onnx
    import onnx.numpy_helper
    import torch
    from models import imagenet_mobilenet_v2
    from structured_harness import prepare, prune

    from onnxprune.graph.batching import run_in_slices
    from onnxprune.training.loop import TrainConfig

    torch.set_num_threads(args.threads)
    if args.model == "fashion":
        from fashion import fashion_mobilenet_v2

        calib, evaluate = fashion_data(args.calib, args.eval, args.labels)
        model = fashion_mobilenet_v2(exporter=args.exporter)
    elif args.model == "fashion-resnet18":
        from fashion_resnet18 import fashion_resnet18

        calib, evaluate = fashion_data(args.calib, args.eval, args.labels)
        model = fashion_resnet18(exporter=args.exporter)
    else:
        calib, evaluate = crops(args.calib, args.eval)
        model = imagenet_mobilenet_v2(args.exporter)
    started = time.perf_counter()
    setup = prepare(model, str(calib), {}, test=str(evaluate))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, quiet=True,
                         device=args.device)
    options = {key: json.loads(value) for key, value in (option.split("=", 1) for option in args.option)}
    method = make_method(args.one, args.target, args.batchnorm, args.latency_table, args.sparsity, options)
    result = prune(setup, method, config, loss=args.loss, temperature=args.temperature)
    seconds = time.perf_counter() - started
    out, ref = run_in_slices(result["pruned"], setup.test_set.inputs)[0], setup.teacher_test[0]
    top5 = lambda x: np.argsort(-x, axis=1)[:, :5]  # noqa: E731
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5(out), top5(ref))]))
    # seed 0 keeps the file names that the docs' bench commands read
    suffix = (f"_s{args.seed}" if args.seed else "") + ("_latency" if args.latency_table else "") + "".join(
        f"_{option.replace('=', '-')}" for option in args.option)
    budget = f"w{args.sparsity}" if args.sparsity is not None else args.target
    onnx.save(result["pruned"], cache_dir() / f"pruned_{args.model}_{args.exporter}_{args.one}_{budget}{suffix}.onnx")
    weights = [onnx.numpy_helper.to_array(t) for t in result["pruned"].graph.initializer if len(t.dims) >= 2]
    nonzero = sum(int(np.count_nonzero(w)) for w in weights) / sum(w.size for w in weights)
    ctx = result["ctx"]
    extra = {}
    if args.one == "bernoulli":
        m = result["method"]
        extra = {"theta_start": m.init, "decided_before_rounding": m.decided_fraction}
    return {"lr": ctx.lr, "lr_probe": ctx.lr_probe and [(t["lr"], round(t["fraction"], 4)) for t in ctx.lr_probe["trials"]],
            **extra, "method": args.one, "agreement": result["agreement"], "accuracy": result["accuracy"], "top5_overlap": overlap,
            "classes": int(len(set(out.argmax(1)))), "classes_original": int(len(set(ref.argmax(1)))),
            "macs_frac": result["macs_frac"], "params_frac": result["params_frac"], "nonzero_weights": nonzero,
            "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="imagenet", choices=("imagenet", "fashion", "fashion-resnet18"),
                        help="imagenet: model (c), label-free on photos; fashion: model (a), Fashion-MNIST at 64 px; "
                             "fashion-resnet18: model (b), a ResNet-18 trained here on Fashion-MNIST at 64 px")
    parser.add_argument("--labels", action="store_true", help="fashion: calibrate with labels (kd+ce)")
    parser.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"))
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--calib", type=int, default=512)
    parser.add_argument("--eval", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None,
                        help="the weights' learning rate [default: probed, onnxprune.training.lr_probe]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss", default=None, help="kd (default without labels) or mse (on the logits)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="uniform,magnitude,lagrangian")
    parser.add_argument("--batchnorm", action="store_true",
                        help="uniform, magnitude, lagrangian: fine-tune with a BatchNorm re-inserted after every conv")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where the fine-tuning runs")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option (lagrangian, bernoulli, lc, ltp), its value in JSON, e.g. settle_epochs=0; repeatable")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="weight granularity: magnitude, lc and ltp at this sparsity (--target is then unused)")
    parser.add_argument("--latency-table", help="lagrangian: a table from `onnxprune profile`; --target is then "
                        "a fraction of the predicted latency")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = parser.parse_args()
    try:
        if args.one:
            print(json.dumps(run_one(args)))
            return
        if args.model == "imagenet":
            crops(args.calib, args.eval)
    except AssetMissing as exc:
        sys.exit(f"skipped: {exc}")
    network = {"fashion": "MobileNetV2", "fashion-resnet18": "ResNet-18"}.get(args.model)
    what = (f"Fashion-MNIST {network} at 64 px ({args.exporter}), {'with' if args.labels else 'without'} labels, "
            f"{args.calib} calibration images, {args.eval} test images" if network else
            f"ImageNet MobileNetV2 ({args.exporter}), label-free, {args.calib} calibration crops, {args.eval} "
            f"evaluation crops of other photos")
    print(f"{what}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr or 'probed'}, "
          f"loss {args.loss or ('kd+ce' if args.labels else 'kd')} (T {args.temperature}), "
          + (f"weight sparsity {args.sparsity:.0%}" if args.sparsity is not None else f"target {args.target:.0%} MACs"))
    print("| method | accuracy | top-1 agreement | top-5 overlap | classes | MACs | params | lr | time s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.methods.split(","):
        argv = [sys.executable, __file__, *sys.argv[1:], "--one", name]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        print(f"| {name} | {accuracy} | {r['agreement']:.3f} | {r['top5_overlap']:.3f} | {r['classes']}/{r['classes_original']} "
              f"| {r['macs_frac']:.3f} | {r['params_frac']:.3f} | {r['lr']:g} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |",
              flush=True)
        print("   ", json.dumps({k: v for k, v in r.items() if k in ("lr_probe", "theta_start", "decided_before_rounding",
                                                                     "nonzero_weights")}),
              flush=True)


if __name__ == "__main__":
    main()
