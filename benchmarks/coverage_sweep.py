"""Import coverage sweep: torchvision classifiers through both torch exporters, import, write back.

For each model (random weights, seeded, eval mode), exporter (dynamo=True / dynamo=False) and
opset (17 and the exporter's default) this exports to ONNX, imports with onnxprune, writes the
unchanged import back, and reports

    torch_err:   max |torch(import) - ort(original)|   (and the same relative to max |ort|)
    written_err: max |ort(written) - ort(original)|
    ok:          torch_err within atol 1e-5 + rtol 1e-4 * |ort| element-wise, written model passes
                 onnx.checker (full_check) and written_err == 0
    chk:         import_model's own check: the rule above, or max error <= 4x the network's float32
                 noise (max |torch_float32 - torch_float64|, measured only when the rule fails)

Models are torchvision's with seeded random weights; see ``realistic_random_model`` for how they
are given realistic activation scales.

Usage: python benchmarks/coverage_sweep.py [--models resnet18,vit_b_16] [--size 224] [--json out.json]
Set OMP_NUM_THREADS=1 on shared machines; the full sweep at 224 takes tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from onnxprune.errors import OnnxPruneError, UnsupportedModelError
from onnxprune.graph.verify import max_errors, run_onnxruntime
from onnxprune.importing.importer import check_import, float32_noise, import_model, run_torch
from onnxprune.importing.writeback import write_back
from tests.support.torch_models import export, realistic_random_model

DEFAULT_MODELS = (
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vgg11_bn",
    "squeezenet1_0", "densenet121", "shufflenet_v2_x0_5", "regnet_x_400mf", "resnext50_32x4d",
    "convnext_tiny", "vit_b_16",
)
ATOL, RTOL = 1e-5, 1e-4


def sweep_one(name: str, model: torch.nn.Module, x: torch.Tensor, dynamo: bool, opset: int | None) -> dict:
    row = {"model": name, "exporter": "dynamo" if dynamo else "torchscript", "requested_opset": opset}
    start = time.perf_counter()
    try:
        onnx_model = export(model, x, dynamo, opset)
    except Exception as exc:  # an exporter failure is a row, not a crash
        row.update(ok=False, stage="export", error=str(exc).splitlines()[0][:200])
        return row
    row["opset"] = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
    row["export_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    try:
        imported = import_model(onnx_model, check=False)
        feeds = imported.sample_inputs(seed=0)
        reference = run_onnxruntime(onnx_model, feeds)
        ours = run_torch(imported, feeds)
        torch_abs, torch_rel = max_errors(reference, ours)
        close = all(np.allclose(o, r, atol=ATOL, rtol=RTOL) for r, o in zip(reference, ours))
        try:  # import_model's own verdict: the strict rule, else within 4x float32 noise
            noise = check_import(imported, atol=ATOL, rtol=RTOL).float32_noise
            checked = True
        except UnsupportedModelError:
            noise, checked = float32_noise(imported, feeds), False
        written = write_back(imported)
        onnx.checker.check_model(written, full_check=True)
        written_abs, _ = max_errors(reference, run_onnxruntime(written, feeds))
    except (OnnxPruneError, onnx.checker.ValidationError) as exc:
        row.update(ok=False, stage="import", error=str(exc)[:300])
        return row
    row.update(
        ok=bool(close and written_abs == 0.0), ok_check=bool(checked and written_abs == 0.0),
        f32_noise=noise, stage="done", params=len(imported.params),
        out_scale=float(max(np.abs(r).max() for r in reference)),
        torch_abs=torch_abs, torch_rel=torch_rel, written_abs=written_abs,
        import_s=round(time.perf_counter() - start, 1),
    )
    return row


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_table(rows: list[dict]) -> None:
    header = (f"{'model':20} {'exporter':11} {'opset':>5} {'ok':>4} {'chk':>4} {'f32 noise':>9} "
              f"{'out scale':>9} "
              f"{'torch-vs-ort abs':>16} {'rel':>9} {'written-vs-orig':>15} {'params':>6} {'export_s':>8} "
              f"{'import_s':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.get("stage") != "done":
            print(f"{r['model']:20} {r['exporter']:11} {str(r.get('opset', r['requested_opset'])):>5} "
                  f"{'FAIL':>4} {r['stage']}: {r['error']}")
            continue
        print(f"{r['model']:20} {r['exporter']:11} {r['opset']:>5} {'yes' if r['ok'] else 'NO':>4} "
              f"{'yes' if r['ok_check'] else 'NO':>4} {_fmt(r['f32_noise']):>9} {r['out_scale']:9.3g} "
              f"{r['torch_abs']:16.3g} "
              f"{r['torch_rel']:9.2g} {r['written_abs']:15.3g} {r['params']:6d} "
              f"{r['export_s']:8.1f} {r['import_s']:8.1f}")
    passed = sum(bool(r.get("ok")) for r in rows)
    checked = sum(bool(r.get("ok_check")) for r in rows)
    print(f"\nok:  {passed}/{len(rows)} rows pass |torch - ort| <= {ATOL:g} + {RTOL:g} |ort| element-wise, "
          f"written model identical")
    print(f"chk: {checked}/{len(rows)} rows pass import_model's check (the rule above, or max error "
          f"<= 4 x float32 noise = max |torch32 - torch64|; f32 noise shown where measured)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=224, help="input height = width (vit_b_16 needs 224)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the exporters are chatty
    rows = []
    for name in args.models.split(","):
        model = realistic_random_model(name, args.size)
        x = torch.randn(1, 3, args.size, args.size)
        for dynamo in (True, False):
            for opset in (17, None):
                rows.append(sweep_one(name, model, x, dynamo, opset))
                r = rows[-1]
                print(f"# {name} {r['exporter']} opset {r.get('opset')}: "
                      f"{'ok' if r.get('ok') else 'FAIL'} {r.get('torch_abs', r.get('error', ''))}", flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
