"""Random plans on real models: every rewrite checked against its masked reference.

For each torchvision model (random weights, random BatchNorm statistics; both exporters) and
each bundled sample model (imported through onnxprune.importing.importer), a plan keeping a random half
of every prunable group (and dropping a third of the residual branches, where there are some)
is applied. Printed per model: groups (prunable/total), branches, MACs before / predicted /
counted after (onnxprune.graph.macs.count_macs), the largest difference from the masked reference on
onnxruntime, and whether it is within atol 1e-5 / rtol 1e-4. Exit status 1 if any model fails.

    python benchmarks/passes_random_plans.py [--size 64] [--models resnet18,mobilenet_v2,...]
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# vgg11's TorchScript export of adaptive pooling needs 224 (7x7 features); vit_b_16 takes 224 only
SIZE = {"vgg11": 224, "vit_b_16": 224}
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg11", "squeezenet1_0",
               "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_x_400mf", "densenet121", "convnext_tiny",
               "resnext50_32x4d", "vit_b_16")


def check(label: str, model: onnx.ModelProto, shapes: dict, seed: int = 0) -> bool:
    from onnxprune.passes import analyze
    from onnxprune.passes.testing import check_exact, random_plan

    start = time.perf_counter()
    try:
        analysis = analyze(model, shapes)
        plan = random_plan(analysis, seed=seed, fraction=0.5, branch_fraction=0.33)
        checked = check_exact(model, plan, analysis=analysis, seed=seed)
        ok = checked.macs == checked.predicted_macs
        frozen = sorted({g.reason.split(";")[0] for g in analysis.groups if not g.prunable})
        print(f"{label:<34}{len(analysis.prunable_groups):>4}/{len(analysis.groups):<4}{len(plan.dropped_branches):>3}/"
              f"{len(analysis.residual_branches):<4}{analysis.total_macs / 1e6:>10.1f}{checked.predicted_macs / 1e6:>10.1f}"
              f"{checked.macs / 1e6:>10.1f}{checked.max_abs:>11.1e}  {'ok' if ok else 'MACS DIFFER'}"
              f"  {time.perf_counter() - start:5.1f}s", flush=True)
        for reason in frozen[:4]:
            print(f"{'':<6}frozen: {reason[:110]}")
        return ok
    except Exception as exc:  # report and go on: this is a survey
        print(f"{label:<34} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:140]}", flush=True)
        return False


def main(argv: list[str] | None = None) -> int:
    from test_pass_models import export_torchvision

    from onnxprune.importing.importer import import_model
    from onnxprune.importing.normalize import normalize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", default=",".join(TORCHVISION))
    args = parser.parse_args(argv)
    print(f"{'model':<34}{'groups':>9}{'branches':>9}{'MMAC':>10}{'predicted':>10}{'counted':>10}{'max |diff|':>11}")
    results = []
    for name in args.models.split(","):
        for dynamo in (False, True):
            size = SIZE.get(name, args.size)
            label = f"{name} {size}px {'dynamo' if dynamo else 'torchscript'}"
            try:
                model = normalize(export_torchvision(name, size, dynamo))
            except Exception as exc:
                print(f"{label:<34} export failed: {str(exc).splitlines()[0][:100]}")
                continue
            results.append(check(label, model, {"x": (1, 3, size, size)}))
    root = Path(__file__).resolve().parents[1] / "sample_models"
    for path in sorted(glob.glob(str(root / "*.onnx"))):
        model = import_model(onnx.load(path), {"image": (2, 1, 8, 8)}).onnx_model
        results.append(check(f"sample {Path(path).stem}", model, {"image": (2, 1, 8, 8)}))
    print(f"\n{sum(results)}/{len(results)} models exact with the predicted MACs")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
