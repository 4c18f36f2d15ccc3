"""Structured methods on torchvision models: valid, smaller, and faster on the CPU.

Each model is built with random weights (``weights=None``), exported to ONNX (opset 17, dynamic
batch) at a small input (default 3x64x64), and pruned by both structured methods to
``--target`` of its MACs, with seeded random Gaussian calibration images (the distillation
targets are the original's own outputs, so random inputs are a valid, if easy, task). Each
result passes the checker and equals the trained torch model under onnxruntime (the harness
verifies); latency is onnxruntime CPU, 1 thread, batch 1 and batch 8 (``--latency-batch``),
interleaved (p50). The check printed per row: speedup >= 0.8 x the MAC reduction
(MACs_original / MACs_pruned).

``NAME@B`` exports NAME with a fixed batch B instead (plain ``torch.onnx.export`` without
dynamic_axes, as a new user would; ``docs/fixed-batch.md``): onnxruntime runs it B samples per
call, the pruned model keeps [B, ...], and latency is timed at batch B only.

    python benchmarks/structured_sweep.py [--models resnet18,mobilenet_v2,resnet18@1,mobilenet_v2@4] [--size 64]

``--matrix`` (issue 14 item 8) runs instead every torchvision family of the coverage sweep
(``coverage_sweep.DEFAULT_MODELS``) x both exporters x lagrangian, bernoulli, lc and ltp
(``--granularity channel``) through the public API, one short epoch on random images at
``--size`` px (tests/support/sweep.py): each cell is a verified smaller model, a refusal
before training, or FAILED. Rows go to ``--jsonl`` as they finish (a long run can be read
while it runs, or resumed: cells already there are skipped); the table is printed at the end.

    nice -n 10 python benchmarks/structured_sweep.py --matrix --size 64 --jsonl sweep.jsonl [--models ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from coverage_sweep import realistic_random_model  # noqa: E402
from structured_harness import TrainConfig, prepare, prune, threads  # noqa: E402

from onnxprune.measure.latency import measure_latency  # noqa: E402
from onnxprune.methods.bernoulli import Bernoulli  # noqa: E402
from onnxprune.methods.lagrangian import Lagrangian  # noqa: E402


def export(name: str, size: int, folder: Path, batch: int | None = None) -> Path:
    """Dynamic batch N, or (``batch``) a fixed batch: no dynamic_axes."""
    # BatchNorm statistics measured on random images: with torchvision's fresh statistics
    # mobilenet_v2's logits are ~1e-10 for every input, so distillation carries no signal and the
    # gates have nothing to choose by (every allocation "matches" a constant teacher)
    model = realistic_random_model(name, size)
    path = folder / (f"{name}.onnx" if batch is None else f"{name}_b{batch}.onnx")
    x = torch.randn(batch or 1, 3, size, size)
    dynamic = None if batch is not None else {"input": {0: "N"}, "logits": {0: "N"}}
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamic_axes=dynamic, dynamo=False)
    return path


def matrix(args) -> None:
    """``--matrix`` (module docstring)."""
    from coverage_sweep import DEFAULT_MODELS

    from tests.support.sweep import METHODS, sweep_cell

    models = DEFAULT_MODELS if args.models is None else args.models.split(",")
    methods = list(METHODS) if args.methods is None else args.methods.split(",")
    exporters = args.exporters.split(",")
    out = Path(args.jsonl) if args.jsonl else None
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out and out.exists() else []
    done = {(r["model"], r["exporter"], r["method"]) for r in rows}
    folder = Path(args.work or tempfile.mkdtemp(prefix="onnxprune-sweep-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in models:
        for exporter in exporters:
            for method in methods:
                if (name, exporter, method) in done:
                    continue
                row = sweep_cell(name, exporter, method, folder, size=args.size, samples=args.samples,
                                 epochs=1, batch_size=args.batch_size)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if out:
                    with out.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
    print()
    print(table(rows))


def table(rows: list[dict]) -> str:
    """Markdown: one line per model and exporter, one column per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| model | exporter | " + " | ".join(methods) + " |", "| --- | --- |" + " --- |" * len(methods)]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        if r["outcome"] == "pruned":
            text = f"MACs {r['macs_frac']:.2f}, params {r['params_frac']:.2f}"
        else:
            text = f"{r['outcome']}: {r.get('reason', '')[:90]}"
        cells.setdefault((r["model"], r["exporter"]), {})[r["method"]] = text.replace("|", "/")
    for (model, exporter), by_method in cells.items():
        lines.append(f"| {model} | {exporter} | " + " | ".join(by_method.get(m, "not run") for m in methods) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", action="store_true", help="the issue-14 sweep (module docstring)")
    parser.add_argument("--methods", default=None, help="--matrix: comma list (default: all four)")
    parser.add_argument("--exporters", default="torchscript,dynamo", help="--matrix: comma list")
    parser.add_argument("--jsonl", default=None, help="--matrix: append rows here; cells already there are skipped")
    parser.add_argument("--work", default=None, help="--matrix: folder for the exported models (kept)")
    parser.add_argument("--models", default=None,
                        help="comma list; NAME@B: exported with a fixed batch B (default resnet18,mobilenet_v2,"
                             "resnet18@1,mobilenet_v2@4; --matrix: coverage_sweep.DEFAULT_MODELS)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--target", default="0.5")
    parser.add_argument("--samples", type=int, default=None, help="calibration images (default 256; --matrix 48)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-seconds", type=float, default=4.0)
    parser.add_argument("--latency-batch", type=int, default=8, help="a second timed batch size (besides 1)")
    args = parser.parse_args()
    if args.matrix:
        args.samples = args.samples or 48
        args.batch_size = 16 if args.batch_size == 32 else args.batch_size
        threads(1)
        logging.basicConfig(level=logging.ERROR)
        matrix(args)
        return
    args.models = args.models or "resnet18,mobilenet_v2,resnet18@1,mobilenet_v2@4"
    args.samples = args.samples or 256
    threads(1)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        images = rng.normal(size=(args.samples, 3, args.size, args.size)).astype(np.float32)
        np.savez(tmp / "calib.npz", input=images)
        for spec in args.models.split(","):
            name, _, fixed = spec.partition("@")
            fixed = int(fixed) if fixed else None
            path = export(name, args.size, tmp, fixed)
            shapes = {"input": (fixed or 1, 3, args.size, args.size)}
            batches = (1, args.latency_batch) if fixed is None else (fixed,)  # a fixed batch runs only at B
            setup = prepare(path, str(tmp / "calib.npz"), shapes, holdout=0.125)
            for cls in (Lagrangian, Bernoulli):
                method = cls(target_macs=args.target)
                config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, quiet=True)
                result = prune(setup, method, config)
                reduction = 1 / result["macs_frac"]
                row = {"model": spec, "method": cls.name, "batches": batches, "macs_frac": result["macs_frac"],
                       "params_frac": result["params_frac"], "agreement": result["agreement"],
                       "mac_reduction": reduction, "dropped_branches": len(result["plan"].dropped_branches),
                       "seconds": result["seconds"]}
                for batch in batches:
                    stats = measure_latency([setup.original, result["pruned"]], {"input": images[:1]}, threads=1,
                                            seconds=args.latency_seconds, batch=batch)
                    speedup = stats[0].p50_ms / stats[1].p50_ms
                    fastest = stats[0].min_ms / stats[1].min_ms
                    row[f"b{batch}"] = {"p50_ms_original": stats[0].p50_ms, "p50_ms": stats[1].p50_ms,
                                        "speedup": speedup, "speedup_min": fastest,
                                        "speedup_ok": speedup >= 0.8 * reduction}
                onnx.checker.check_model(result["pruned"], full_check=True)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| model | method | MACs frac | params frac | removed blocks | batch | p50 ms (orig -> pruned) | speedup p50 (min) | p50 >= 0.8x MAC reduction |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for batch in r["batches"]:
            t = r[f"b{batch}"]
            print(f"| {r['model']} | {r['method']} | {r['macs_frac']:.3f} | {r['params_frac']:.3f} | {r['dropped_branches']} "
                  f"| {batch} | {t['p50_ms_original']:.3f} -> {t['p50_ms']:.3f} | {t['speedup']:.2f}x ({t['speedup_min']:.2f}x) | "
                  f"{'yes' if t['speedup_ok'] else 'NO'} ({r['mac_reduction']:.2f}x) |")

if __name__ == "__main__":
    main()
