"""Where a pruned model's time goes: onnxruntime CPU kernel time by op kind, original vs pruned.

    python benchmarks/real/op_breakdown.py ORIGINAL.onnx PRUNED.onnx [--batch 32] [--threads 1] [--runs 30]

A MAC reduction r turns into a speedup below r when part of the time does not scale with the
MACs. This splits the measured time into kinds and sets each kind's time ratio beside its MAC
ratio:

    kind time  T_k  = sum of the kernel times of the kind's nodes (onnxruntime's profiler), per run
    speedup         = sum_k T_k(original) / sum_k T_k(pruned)
    over MAC scaling = T_k(pruned) - T_k(original) * m, the time kind k costs beyond what it would
                      if it scaled with the whole model's MAC ratio m (their sum is the speedup's
                      shortfall, in ms)

Kinds: dense convs (group 1), depthwise convs (group = channels), other grouped convs, matmul/gemm,
and every other op type by name (onnxruntime's fused kernels keep their node's name, so a fused
Conv+Clip is still classified by its Conv). Layout reorders (NCHWc) appear as ``ReorderInput`` /
``ReorderOutput``. Every model is timed in one process, runs interleaved, so the ratio is side by
side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from onnxprune.graph.macs import count_macs  # noqa: E402
from onnxprune.graph.shapes import resolve_input_shapes  # noqa: E402


def conv_kind(node: onnx.NodeProto, channels_in: int | None) -> str:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group == 1:
        return "Conv, dense"
    return "Conv, depthwise" if channels_in is not None and group == channels_in else "Conv, grouped"


_FUSED_ACTIVATIONS = ("Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh")


def node_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """Node name, and output tensor name, -> kind (convs split by their group).

    onnxruntime's NCHWc pass names its nodes after their output tensor (``<tensor>_nchwc``), and a
    Conv fused with its activation writes the activation's output, so those names map too."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        kind = None
        if node.op_type == "Conv":
            shape = weights.get(node.input[1])
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kind = conv_kind(node, shape[1] * group if shape else None)
        elif node.op_type in ("MatMul", "Gemm"):
            kind = "MatMul/Gemm"
        elif node.op_type in _FUSED_ACTIVATIONS and node.input[0] in kinds:
            kinds[node.output[0]] = kinds[node.input[0]]
        if kind:
            kinds[node.name] = kind
            kinds.update({out: kind for out in node.output})
    return kinds


def macs_by_kind(model: onnx.ModelProto, batch: int) -> dict[str, int]:
    shapes = {name: (batch, *shape[1:]) for name, shape in resolve_input_shapes(model).items()}
    kinds = node_kinds(model)
    totals: dict[str, int] = defaultdict(int)
    for layer in count_macs(model, shapes).layers:
        totals[kinds.get(layer.node, layer.op_type)] += layer.macs
    return totals


def profiled_kernel_times(path: str, feeds: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, float]:
    """Mean ms per run by kind, from one profiled session (warm-up runs excluded)."""
    import onnxruntime as ort

    model = onnx.load(path)
    kinds = node_kinds(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        warmup = 5
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run: dict[str, float] = defaultdict(float)
    calls = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # the first `warmup` runs' events come first; each run emits the same nodes in order
    per_call = len(calls) // (warmup + runs)
    for event in calls[warmup * per_call:]:
        name = event["name"][: -len("_kernel_time")].removesuffix("_nchwc")
        kind = kinds.get(name, event["args"].get("op_name", "?"))
        per_run[kind] += event["dur"] / 1000 / runs
    return per_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original")
    parser.add_argument("pruned")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="alternating profiled sessions per model")
    args = parser.parse_args()

    original = onnx.load(args.original)
    shapes = {name: (args.batch, *shape[1:]) for name, shape in resolve_input_shapes(original).items()}
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    times = {"original": defaultdict(float), "pruned": defaultdict(float)}
    for _ in range(args.rounds):  # alternate the models so that machine noise hits both
        for label, path in (("original", args.original), ("pruned", args.pruned)):
            for kind, ms in profiled_kernel_times(path, feeds, args.threads, args.runs).items():
                times[label][kind] += ms / args.rounds
    macs = {"original": macs_by_kind(original, args.batch), "pruned": macs_by_kind(onnx.load(args.pruned), args.batch)}
    total = {label: sum(t.values()) for label, t in times.items()}
    mac_ratio = sum(macs["pruned"].values()) / sum(macs["original"].values())
    print(f"batch {args.batch}, {args.threads} thread(s), {args.runs} runs x {args.rounds} rounds; kernel time "
          f"{total['original']:.2f} -> {total['pruned']:.2f} ms ({total['original'] / total['pruned']:.2f}x) "
          f"for {1 / mac_ratio:.2f}x fewer MACs")
    macs_original = sum(macs["original"].values())
    print("| kind | original ms (share) | original MAC share | pruned ms | time ratio | MAC ratio | ms over MAC scaling |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in sorted(times["original"], key=lambda k: -times["original"][k]):
        t0, t1 = times["original"][kind], times["pruned"].get(kind, 0.0)
        m0, m1 = macs["original"].get(kind, 0), macs["pruned"].get(kind, 0)
        ratio = f"{m1 / m0:.3f}" if m0 else "-"
        print(f"| {kind} | {t0:.2f} ({t0 / total['original']:.1%}) | {m0 / macs_original:.1%} | {t1:.2f} | "
              f"{t1 / t0:.3f} | {ratio} | {t1 - t0 * mac_ratio:+.2f} |")


if __name__ == "__main__":
    main()
