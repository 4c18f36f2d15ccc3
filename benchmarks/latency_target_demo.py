"""`--target-latency-ms` end to end: the real CLI on the sample and torchvision models.

    python benchmarks/latency_target_demo.py [--fraction 0.6] [--methods lagrangian,bernoulli]
        [--models resnet,vgg,resnet18,mobilenet_v2] [--size 112] [--epochs 3] [--tv-epochs 2]
        [--rounds 4] [--sample-batch 64] [--seconds 1] [--bn-batches 8] [--json results.json] [--keep DIR]

For each model and method it first times the original (onnxruntime CPU, one thread, p50 of one
call) and sets the target to ``fraction`` of that, then runs

    python -m onnxprune MODEL --method M --target-latency-ms T --providers cpu
        --latency-batch B --latency-threads 1 --calib ... --report run.json --out small.onnx

in a subprocess (OMP_NUM_THREADS=1) and reads the run's report: the original's latency as the
run measured it, the curve of every model the search tried, the chosen one. Afterwards the
written model is timed again, interleaved with the original (``check``), to show how well the
hit survives a fresh measurement on a shared machine.

Models:
* ``resnet``, ``vgg``: sample_models/*.onnx (8x8 digits, calib sample_models/digits_train.npz).
  They take 0.02-0.05 ms per call at batch 1, nearly all fixed per-call overhead, so they are
  timed at ``--latency-batch 64`` (``--sample-batch``) where the compute dominates.
* ``resnet18``, ``mobilenet_v2``: torchvision, random weights (BatchNorm statistics estimated
  on random images, ``--bn-batches``), exported with torch.onnx (dynamo=False, opset 17,
  dynamic batch) at ``--size`` x ``--size``; ``--calib synthetic``, timed at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"resnet", "vgg"}
TORCHVISION = {"resnet18", "mobilenet_v2"}


def export_torchvision(name: str, size: int, path: Path, bn_batches: int = 8) -> Path:
    """Random weights; with ``bn_batches`` > 0 the BatchNorm running statistics are first
    estimated on that many batches of 16 standard-normal images (train-mode forwards, no
    gradient), so activations have the scale of a trained model. Without it BN is the identity,
    and after 2 epochs on synthetic data the trained resnet18's logits reached ~180 (the
    original's are ~4), where float32 round-off (6e-5) exceeds the verification's atol 1e-5 on
    the logits near zero: the prune run stopped with exit 5 (twice, lagrangian)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    if bn_batches:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the batches
        model.train()
        with torch.no_grad():
            for _ in range(bn_batches):
                model(torch.randn(16, 3, size, size))
    model.eval()
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                      opset_version=17, dynamo=False)
    return path


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnxprune.graph.shapes import random_feeds, resolve_input_shapes

    return random_feeds(model, resolve_input_shapes(model, {}))


def time_models(models: list, feeds, batch: int, seconds: float) -> list[float]:
    from onnxprune.measure.latency import measure_latency

    stats = measure_latency(models, feeds, provider="cpu", threads=1, batch=batch, seconds=seconds)
    return [s.p50_ms for s in stats]


def run_case(model_path: Path, method: str, calib: str, epochs: int, batch: int, fraction: float, rounds: int,
             seconds: float, folder: Path) -> dict:
    original = onnx.load(str(model_path))
    feeds = feeds_for(original)
    (before_ms,) = time_models([original], feeds, batch, seconds)
    target = round(fraction * before_ms, 4)
    out, report = folder / f"{model_path.stem}-{method}.onnx", folder / f"{model_path.stem}-{method}.json"
    cmd = [sys.executable, "-m", "onnxprune", str(model_path), "--method", method,
           "--target-latency-ms", str(target), "--providers", "cpu", "--latency-threads", "1",
           "--latency-batch", str(batch), "--latency-seconds", str(seconds), "--latency-rounds", str(rounds),
           "--calib", calib, "--epochs", str(epochs), "--seed", "0", "--quiet", "--out", str(out),
           "--report", str(report)]
    print("$ " + " ".join(cmd[1:]).replace(str(folder) + "/", ""), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    took = time.perf_counter() - started
    row = {"model": model_path.stem, "method": method, "batch": batch, "target_ms": target,
           "pre_original_ms": before_ms, "exit": proc.returncode, "seconds": took}
    if proc.returncode != 0 or not report.exists():
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(proc.stdout + proc.stderr, file=sys.stderr)
        return row
    rep = json.loads(report.read_text())
    section = rep["latency_target"]
    chosen = section["curve"][section["chosen"]]
    check_original, check_pruned = time_models([original, str(out)], feeds, batch, seconds)
    row.update(original_ms=section["original_ms"], achieved_ms=chosen["latency_ms"], met=section["met"],
               rounds=len(section["curve"]), chosen=section["chosen"],
               mac_fraction=rep["macs"]["after"] / rep["macs"]["before"],
               fidelity=(rep.get("pruned") or {}).get("top1_agreement"),
               check_original_ms=check_original, check_pruned_ms=check_pruned,
               curve=[{k: c[k] for k in ("round", "mac_fraction", "macs", "latency_ms", "met")}
                      for c in section["curve"]])
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | method | batch | original ms | target ms | achieved ms | met? | rounds | MACs fraction "
            "| fidelity | re-timed (orig -> pruned) | time |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {r['pre_original_ms']:.4g} | "
                         f"{r['target_ms']:.4g} | exit {r['exit']}: {r['error']} | | | | | | {r['seconds']:.0f} s |")
            continue
        fid = "" if r["fidelity"] is None else f"{r['fidelity']:.1%}"
        lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {r['original_ms']:.4g} | {r['target_ms']:.4g} | "
                     f"{r['achieved_ms']:.4g} | {'yes' if r['met'] else 'NO'} | {r['rounds']} | "
                     f"{r['mac_fraction']:.3f} | {fid} | {r['check_original_ms']:.4g} -> {r['check_pruned_ms']:.4g} | "
                     f"{r['seconds']:.0f} s |")
    return "\n".join(lines)


def curves(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "error" not in r:
            points = ", ".join(f"{c['mac_fraction']:.3f}->{c['latency_ms']:.4g}{'*' if c['met'] else ''}"
                               for c in r["curve"])
            lines.append(f"{r['model']}/{r['method']} (chosen round {r['chosen']}): {points}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,vgg,resnet18,mobilenet_v2")
    parser.add_argument("--methods", default="lagrangian,bernoulli")
    parser.add_argument("--fraction", type=float, default=0.6, help="target = fraction x the original's latency")
    parser.add_argument("--size", type=int, default=112, help="torchvision input size")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round, sample models")
    parser.add_argument("--bn-batches", type=int, default=8,
                        help="torchvision: batches of random images that set BN statistics before export (0: none)")
    parser.add_argument("--tv-epochs", type=int, default=2, help="epochs per round, torchvision models")
    parser.add_argument("--rounds", type=int, default=4, help="--latency-rounds")
    parser.add_argument("--sample-batch", type=int, default=64, help="--latency-batch for the sample models")
    parser.add_argument("--seconds", type=float, default=1.0, help="--latency-seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--keep", type=Path, default=None, help="keep models and reports in this folder")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            if name in SAMPLES:
                path, calib, epochs, batch = ROOT / "sample_models" / f"{name}.onnx", \
                    str(ROOT / "sample_models" / "digits_train.npz"), args.epochs, args.sample_batch
            elif name in TORCHVISION:
                path = export_torchvision(name, args.size, folder / f"{name}_{args.size}.onnx", args.bn_batches)
                calib, epochs, batch = "synthetic", args.tv_epochs, 1
            else:
                parser.error(f"unknown model {name!r}")
            for method in args.methods.split(","):
                rows.append(run_case(path, method, calib, epochs, batch, args.fraction, args.rounds, args.seconds,
                                     folder))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(rows))
    print()
    print(curves(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in r and r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
