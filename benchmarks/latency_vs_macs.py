"""Latency tables on the digits samples: predicted vs measured latency, MAC- vs latency-targeted pruning.

For each sample model (issue 19 items 3 and 4):

1. ``onnxprune profile`` at ``--batch`` (default 64: at batch 1 an 8x8 digits model is all per-call
   overhead) with one onnxruntime thread -> ``OUT/<model>.latency.json``.
2. MAC-targeted: ``--method lagrangian --target-macs F`` for each F of ``--fractions``.
3. Latency-targeted at the same predicted latency as the MAC-targeted model of the first fraction:
   ``--latency-table T --target-macs P/L0`` (P the table's prediction for the MAC-targeted model,
   L0 its full-width prediction), so both end near equal latency and their accuracy can be compared.
4. Every model is timed interleaved with the original (``--rounds`` separate measurements of
   ``--seconds`` each, to show the noise), by the calling thread's CPU time and by the wall clock
   (the table is profiled with ``--clock`` (default cpu): on this project's overloaded 2-core
   machine the wall clock of a call longer than a scheduler slice is mostly time spent preempted,
   see onnxprune/measure/profile.py); the figure compared with the prediction is the ratio

       measured ratio  = p50(pruned) / p50(original)      (same rounds, same load, same clock)
       predicted ratio = table(pruned) / table(original)
       error           = predicted ratio / measured ratio - 1

   plus the absolute figures (table ms vs measured ms). Accuracy is on ``digits_test.npz``
   (never seen in training).

    OMP_NUM_THREADS=1 python benchmarks/latency_vs_macs.py --models resnet,vgg --out /tmp/lvm
    OMP_NUM_THREADS=1 python benchmarks/latency_vs_macs.py --models fashion --batch 32 --epochs 3 --out /tmp/lvm-a

``fashion`` and ``fashion-resnet18`` are real models (a) and (b) of ``benchmarks/real/``
(MobileNetV2 fine-tuned, ResNet-18 trained, on Fashion-MNIST at 64 px), once built there: their
2,000 labelled calibration images and 2,000 test images, the grid's ``--lr 1e-4 --batch-size 32``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def _cli(args: list[str], log: Path) -> None:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from onnxprune.cli.main import run; run()", *args],
                          capture_output=True, text=True, cwd=ROOT)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
    print(f"  {log.stem}: {time.perf_counter() - started:.0f}s", file=sys.stderr)


@dataclass(frozen=True)
class Subject:
    """One benchmark model: the ONNX file, its calibration and test data, extra prune options."""

    model: Path
    train: Path
    test: Path
    prune_options: tuple[str, ...] = ()


def subject(name: str) -> Subject:
    """A digits sample by name, or ``fashion`` / ``fashion-resnet18``: real model (a) / (b) of
    benchmarks/real (MobileNetV2 fine-tuned, ResNet-18 trained, on Fashion-MNIST at 64 px, built
    by ``benchmarks/real/fashion.py`` / ``fashion_resnet18.py``, with the grid's 2,000 labelled
    calibration / 2,000 test images), pruned with the grid's settings."""
    real = {"fashion": "fashion_mobilenet_v2_64_torchscript.onnx", "fashion-resnet18": "fashion_resnet18_64_torchscript.onnx"}
    if name not in real:
        return Subject(SAMPLES / f"{name}.onnx", SAMPLES / "digits_train.npz", SAMPLES / "digits_test.npz")
    cache = Path(os.environ.get("ONNXPRUNE_REAL_CACHE", Path.home() / ".cache" / "onnxprune-real"))
    files = [cache / n for n in (real[name], "fashion_calib_2000_labelled.npz", "fashion_test_2000.npz")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"{name} is not built: {missing[0]} (python benchmarks/real/method_grid.py --model {name})")
    return Subject(*files, prune_options=("--lr", "1e-4", "--batch-size", "32"))


def accuracy(path: Path, test: Path) -> float:
    import onnxruntime as ort

    data = np.load(test)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"image": data["image"][i:i + 256]})[0]
                             for i in range(0, len(data["image"]), 256)])
    return float((logits.argmax(1) == data["labels"]).mean())


def macs(path: Path) -> int:
    from onnxprune.graph.macs import count_macs

    return count_macs(onnx.load(str(path))).total_macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg,resnet,mobilenet,mlp")
    ap.add_argument("--fractions", default="0.5,0.3", help="MAC targets; the first is matched by latency")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--profile-seconds", type=float, default=0.3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="the profile's clock")
    ap.add_argument("--out", type=Path, default=Path("/tmp/latency_vs_macs"))
    ap.add_argument("--reuse", action="store_true", help="keep tables and pruned models already in --out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from onnxprune.measure.latency import measure_latency
    from onnxprune.measure.profile import time_cpu
    from onnxprune.methods._support.latency_table import LatencyTable, predict_model_latency

    rows = []
    for name in args.models.split(","):
        spec = subject(name)
        model, train = spec.model, str(spec.train)
        table_path = args.out / f"{name}.latency.json"
        print(f"{name}:", file=sys.stderr)
        if not (args.reuse and table_path.exists()):
            _cli(["profile", str(model), "--batch", str(args.batch), "--threads", "1", "--seconds",
                  str(args.profile_seconds), "--clock", args.clock, "--out", str(table_path)], args.out / f"{name}.profile.log")
        table = LatencyTable(table_path)
        full = predict_model_latency(table, onnx.load(str(model)))
        variants = []
        fractions = [float(f) for f in args.fractions.split(",")]
        for f in fractions:
            path = args.out / f"{name}.macs{f:g}.onnx"
            if not (args.reuse and path.exists()):
                _cli([str(model), "--method", "lagrangian", "--target-macs", f"{f:g}", "--calib", train,
                      "--epochs", str(args.epochs), *spec.prune_options, "--out", str(path)], args.out / f"{path.stem}.log")
            variants.append((f"MACs {f:g}", path))
        matched = predict_model_latency(table, onnx.load(str(variants[0][1]))) / full
        path = args.out / f"{name}.lat{matched:.3f}.onnx"
        if not (args.reuse and path.exists()):
            _cli([str(model), "--method", "lagrangian", "--target-macs", f"{matched:.4f}", "--latency-table",
                  str(table_path), "--calib", train, "--epochs", str(args.epochs), *spec.prune_options, "--out", str(path)],
                 args.out / f"{path.stem}.log")
        variants.append((f"latency {matched:.3f}", path))

        feeds = {"image": np.load(spec.test)["image"][:256]}
        paths = [model, *(p for _, p in variants)]
        clocks = {"cpu": ([[] for _ in paths], [[] for _ in paths]), "wall": ([[] for _ in paths], [[] for _ in paths])}
        protos = [onnx.load(str(p)) for p in paths]
        batch_feeds = {"image": feeds["image"][np.arange(args.batch) % len(feeds["image"])]}
        for _ in range(args.rounds):
            for clock in ("cpu", "wall"):
                if clock == "cpu":
                    stats = time_cpu(protos, [batch_feeds] * len(protos), args.seconds / 2)
                else:
                    stats = measure_latency(protos, feeds, threads=1, batch=args.batch, seconds=args.seconds / 2,
                                            memory_runs=0)
                ratios, absolute = clocks[clock]
                for i, s in enumerate(stats):
                    ratios[i].append(s.p50_ms / stats[0].p50_ms)
                    absolute[i].append(s.p50_ms)
        ratios, absolute = clocks[args.clock]
        wall_ratios = clocks["wall"][0]
        base_macs = macs(model)
        for i, (label, p) in enumerate([("original", model), *variants]):
            predicted = predict_model_latency(table, onnx.load(str(p)))
            measured_ratio = statistics.median(ratios[i])
            rows.append({
                "model": name, "variant": label, "mac_fraction": macs(p) / base_macs,
                "predicted_ms": predicted, "measured_ms": statistics.median(absolute[i]),
                "measured_ms_range": [min(absolute[i]), max(absolute[i])],
                "predicted_ratio": predicted / full, "measured_ratio": measured_ratio,
                "measured_ratio_range": [min(ratios[i]), max(ratios[i])],
                "ratio_error": predicted / full / measured_ratio - 1, "clock": args.clock,
                "wall_ratio": statistics.median(wall_ratios[i]),
                "wall_ratio_range": [min(wall_ratios[i]), max(wall_ratios[i])],
                "wall_ms": statistics.median(clocks["wall"][1][i]),
                "wall_ratio_error": predicted / full / statistics.median(wall_ratios[i]) - 1,
                "absolute_error": predicted / statistics.median(absolute[i]) - 1,
                "accuracy": accuracy(p, spec.test), "table_model_ms": table.model_ms,
                "table_model_spread_ms": table.profile["model_p50_spread_ms"],
            })
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    _print(rows, args)
    _plot(rows, args.out / "latency_vs_macs.png")


def _print(rows: list[dict], args) -> None:
    print(f"batch {args.batch}, 1 onnxruntime thread, table and 'meas' by {args.clock} time; {args.rounds} "
          f"interleaved rounds of {args.seconds / 2:g}s per clock (medians; ranges over rounds); r = / original")
    head = (f"{'model':10} {'variant':15} {'MACs':>6} {'pred ms':>8} {'meas ms (range)':>22} {'pred r':>7} "
            f"{'meas r (range)':>20} {'err r':>7} {'err abs':>8} {'wall r':>7} {'err wall':>8} {'acc':>6}")
    print(head)
    for r in rows:
        lo, hi = r["measured_ms_range"]
        rlo, rhi = r["measured_ratio_range"]
        print(f"{r['model']:10} {r['variant']:15} {r['mac_fraction']:6.3f} {r['predicted_ms']:8.3f} "
              f"{r['measured_ms']:8.3f} ({lo:5.2f}-{hi:5.2f}) {r['predicted_ratio']:7.3f} "
              f"{r['measured_ratio']:6.3f} ({rlo:5.3f}-{rhi:5.3f}) {100 * r['ratio_error']:+6.1f}% "
              f"{100 * r['absolute_error']:+7.1f}% {r['wall_ratio']:7.3f} {100 * r['wall_ratio_error']:+7.1f}% "
              f"{100 * r['accuracy']:5.1f}%")
    pruned = [r for r in rows if r["variant"] != "original"]
    if pruned:
        errors = sorted(abs(r["ratio_error"]) for r in pruned)
        print(f"|ratio error| over {len(pruned)} pruned models: median {100 * statistics.median(errors):.1f}%, "
              f"max {100 * errors[-1]:.1f}%, within 10%: {sum(e <= 0.10 for e in errors)}/{len(errors)}")


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == name):
            marker = "o" if r["variant"].startswith("MACs") else "s" if r["variant"].startswith("latency") else "*"
            ax.errorbar(r["measured_ratio"], 100 * r["accuracy"], marker=marker, ms=8,
                        xerr=[[r["measured_ratio"] - r["measured_ratio_range"][0]],
                              [r["measured_ratio_range"][1] - r["measured_ratio"]]], label=r["variant"])
            ax.plot(r["predicted_ratio"], 100 * r["accuracy"], marker="x", color="k", ms=6)
        ax.set_title(name)
        ax.set_xlabel("latency / original (measured; x = table's prediction)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
