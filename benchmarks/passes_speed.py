"""Speed of the passes: do MAC savings become latency savings, and does the rewrite scale linearly?

1. resnet18, mobilenet_v2, vgg11 (torchvision, random weights, exported at 224x224 with the
   TorchScript exporter): a plan keeping a random half of every prunable group's channels.
   onnxruntime CPU, 2 intra-op threads, batch 1; original and pruned model timed interleaved in
   one run (onnxprune.measure.latency.measure_latency), so load on a shared machine hits both alike.
   Printed: MAC ratio (original / pruned), latency speedup (p50 original / p50 pruned), and
   speedup / MAC ratio (1.0 = every saved MAC is saved time; goal >= 0.8). As a control, the
   same architecture built natively at half width (vgg11 exactly, mobilenet_v2 via width_mult)
   is timed in the same run: the pruned model should be as fast as a net built that narrow.
2. Group analysis + rewrite (apply_plan: prune, remove branches, cleanup, checker) on chains of
   residual blocks of about 100, 1,000 and 10,000 nodes; wall and CPU seconds and microseconds
   per node (linear growth = constant us/node).

    python benchmarks/passes_speed.py [--seconds 10] [--skip-latency] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings

import numpy as np
import onnx


def half_width(name: str):
    """The same architecture built at half width (the control: what a natively narrow net costs)."""
    import torch
    import torchvision
    from torchvision.models import vgg

    if name == "vgg11":  # exactly the shapes a half plan leaves (the 1000 outputs stay)
        net = vgg.VGG(vgg.make_layers([32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"]))
        net.classifier = torch.nn.Sequential(torch.nn.Linear(256 * 49, 2048), torch.nn.ReLU(), torch.nn.Dropout(),
                                             torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Dropout(),
                                             torch.nn.Linear(2048, 1000))
        return net
    if name == "mobilenet_v2":  # width_mult rounds to multiples of 8: close to, not exactly, half
        return torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    return None


def export(name: str, size: int = 224, net=None) -> onnx.ModelProto:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = (net or getattr(torchvision.models, name)(weights=None)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, size, size),), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def latency_table(seconds: float) -> None:
    from onnxprune.graph.macs import count_macs
    from onnxprune.importing.normalize import normalize
    from onnxprune.measure.latency import measure_latency
    from onnxprune.passes import analyze, apply_plan
    from onnxprune.passes.testing import random_plan

    print(f"\nonnxruntime CPU, 2 threads, batch 1, 224x224, interleaved timing ({seconds:.0f} s per model pair)")
    print(f"{'model':<14}{'GMAC orig':>10}{'GMAC pruned':>12}{'MAC ratio':>10}{'p50 orig ms':>12}"
          f"{'p50 pruned ms':>14}{'speedup':>9}{'speedup/MAC':>12}{'half-width net':>20}")
    for name in ("resnet18", "mobilenet_v2", "vgg11"):
        model = normalize(export(name))
        shapes = {"x": (1, 3, 224, 224)}
        analysis = analyze(model, shapes)
        plan = random_plan(analysis, seed=0, fraction=0.5)
        pruned = apply_plan(model, plan, shapes, analysis=analysis)
        before, after = count_macs(model, shapes).total_macs, count_macs(pruned, shapes).total_macs
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
        models, control = [model, pruned], half_width(name)
        if control is not None:
            models.append(export(name, net=control))
        timings = measure_latency(models, feeds, threads=2, seconds=seconds, names=["orig", "pruned", "half"][:len(models)])
        original, smaller = timings[:2]
        mac_ratio, speedup = before / after, original.p50_ms / smaller.p50_ms
        native = ""
        if control is not None:  # same run: the pruned model against a net built that narrow
            native = f"{count_macs(models[2], shapes).total_macs / 1e9:.3f} GMAC {timings[2].p50_ms:.1f} ms"
        print(f"{name:<14}{before / 1e9:>10.3f}{after / 1e9:>12.3f}{mac_ratio:>10.2f}{original.p50_ms:>12.2f}"
              f"{smaller.p50_ms:>14.2f}{speedup:>9.2f}{speedup / mac_ratio:>12.2f}{native:>20}", flush=True)


def scaling_table() -> None:
    from onnxprune.passes import analyze, apply_plan
    from onnxprune.passes.testing import random_graph, random_plan

    print("\nanalysis + rewrite time, chains of residual blocks (Conv-BN-Relu-Conv-BN-Add-Relu)")
    print(f"{'nodes':>7}{'analyze s':>10}{'rewrite s':>10}{'total s':>9}{'CPU s':>8}{'us/node (CPU)':>15}")
    for blocks in (14, 140, 1400):
        model = random_graph(["residual"] * blocks, [8, 6, 6, 6, 6, 6], False, 8)
        nodes = len(model.graph.node)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        analysis = analyze(model)
        wall1 = time.perf_counter()
        apply_plan(model, random_plan(analysis, 0, 0.5, 0.2), analysis=analysis)
        wall2, cpu2 = time.perf_counter(), time.process_time()
        print(f"{nodes:>7}{wall1 - wall0:>10.2f}{wall2 - wall1:>10.2f}{wall2 - wall0:>9.2f}{cpu2 - cpu0:>8.2f}"
              f"{1e6 * (cpu2 - cpu0) / nodes:>15.0f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per model pair")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args(argv)
    import os

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.skip_scaling:
        scaling_table()
    if not args.skip_latency:
        latency_table(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
