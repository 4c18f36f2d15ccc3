"""vit_b_16 with attention heads and MLP units pruned to a MAC budget, through both exporters.

torchvision's vit_b_16 with seeded random weights at a realistic scale
(tests/support/torch_models.py: give_realistic_scale), exported by the TorchScript and the dynamo
exporter at 1x3xSIZExSIZE. The plan is chosen without training (this measures the graph side,
not a method): every head and MLP unit is scored by the L2 norm of its gate tensors (a head: its
V columns and bias; a unit: its fc1 column and bias), normalized by its group's mean, and the
lowest are removed in one global order until the differentiable resource
(methods/_support/resource.py, which counts QK^T and AV with the kept heads) meets the target
(``select_to_budget``). ``--hidden`` also ranks the residual stream's channels (exact with
padded LayerNorms). Then the real ``apply_plan`` rewrites the graph, onnxruntime on the pruned
model is compared with the masked reference on one random image, and both models are timed
interleaved on the CPU (onnxprune.measure.latency).

    python benchmarks/vit_heads.py [--size 224] [--target 0.5] [--hidden] [--seconds 3] [--threads 2]

vit_b_16 at 224 is 17.6 GMAC: on a 2-core machine one run of the original takes ~0.3 s, so the
latency runs are kept short (``--seconds``) and their spread is wide; say so with the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from onnxprune.graph.macs import count_macs, format_count  # noqa: E402
from onnxprune.importing.normalize import normalize  # noqa: E402
from onnxprune.measure.latency import measure_latency  # noqa: E402
from onnxprune.methods._support.resource import Resource, select_to_budget, terms_from_analysis  # noqa: E402
from onnxprune.passes.apply import apply_plan  # noqa: E402
from onnxprune.passes.groups import analyze  # noqa: E402
from onnxprune.passes.masking import masked_reference  # noqa: E402
from onnxprune.passes.plan import PruningPlan  # noqa: E402
from onnxprune.passes.testing import run  # noqa: E402
from tests.support.torch_models import export, give_realistic_scale  # noqa: E402


def scores_of(model: onnx.ModelProto, groups) -> dict[str, torch.Tensor]:
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    out = {}
    for group in groups:
        total = np.zeros(group.size)
        for ta in group.gate_tensors:
            array = np.moveaxis(weights[ta.name], ta.axis, 0)[ta.start:ta.stop].reshape(group.size, -1)
            total += (array.astype(np.float64) ** 2).sum(1)
        norm = np.sqrt(total)
        out[group.id] = torch.tensor(norm / max(norm.mean(), 1e-12))
    return out


def one(exporter: str, size: int, target: float, hidden: bool, seconds: float, threads: int) -> dict:
    torch.manual_seed(0)
    net = give_realistic_scale(torchvision.models.vit_b_16(weights=None, image_size=size), size)
    start = time.perf_counter()
    model = normalize(export(net, torch.randn(1, 3, size, size), exporter == "dynamo", None))
    exported = time.perf_counter() - start
    start = time.perf_counter()
    analysis = analyze(model, hidden_size=hidden)
    heads = [g for g in analysis.prunable_groups if any(t.block > 1 for t in g.gate_tensors)]
    chosen = [g for g in analysis.prunable_groups if g.size > 1]
    resource = Resource(terms_from_analysis(analysis, model), {g.id: g.size for g in chosen})
    masks = select_to_budget(scores_of(model, chosen), resource, target * resource.total_macs)
    plan = PruningPlan(kept={gid: tuple(int(i) for i in torch.nonzero(m).flatten()) for gid, m in masks.items()
                             if not bool(m.all())}, meta={"hidden_size": hidden})
    pruned = apply_plan(model, plan, analysis=analysis)
    rewritten = time.perf_counter() - start
    image = {"x": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    expected, actual = run(masked_reference(model, plan, analysis), image)[0], run(pruned, image)[0]
    stats = measure_latency([model, pruned], image, threads=threads, seconds=seconds, min_runs=5, warmup=2,
                            names=["original", "pruned"])
    kept_heads = sum(len(plan.kept.get(g.id, range(g.size))) for g in heads)
    return {
        "exporter": exporter, "export_s": exported, "rewrite_s": rewritten,
        "heads": f"{kept_heads}/{sum(g.size for g in heads)}",
        "macs": (count_macs(model).total_macs, count_macs(pruned).total_macs, analysis.predicted_macs(plan)),
        "max_abs": float(np.abs(expected - actual).max()), "scale": float(np.abs(expected).max()),
        "p50": (stats[0].p50_ms, stats[1].p50_ms), "runs": (stats[0].runs, stats[1].runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--hidden", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exporters", default="torchscript,dynamo")
    args = parser.parse_args()
    print(f"vit_b_16 at {args.size}, target {args.target:.0%} MACs, hidden size {'on' if args.hidden else 'off'}, "
          f"ORT CPU {args.threads} threads, {args.seconds:.0f} s per timing")
    print("| exporter | heads kept | MACs before -> after (predicted) | max abs err vs masked (output scale) "
          "| p50 ms original -> pruned | speed-up | export, analyze+rewrite s |")
    print("|---|---|---|---|---|---|---|")
    for exporter in args.exporters.split(","):
        r = one(exporter, args.size, args.target, args.hidden, args.seconds, args.threads)
        before, after, predicted = r["macs"]
        print(f"| {exporter} | {r['heads']} | {format_count(before)} -> {format_count(after)} ({after / before:.1%}; "
              f"predicted {format_count(predicted)}) | {r['max_abs']:.2e} ({r['scale']:.2f}) | "
              f"{r['p50'][0]:.1f} -> {r['p50'][1]:.1f} ({r['runs'][0]}/{r['runs'][1]} runs) | "
              f"{r['p50'][0] / r['p50'][1]:.2f}x | {r['export_s']:.0f}, {r['rewrite_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
