"""Per-layer latency tables: ``onnxprune profile MODEL --out latency.json`` (issue 19, item 2).

Every prunable layer (a Conv, Gemm or MatMul whose weight is a constant) is cut out of the
model as a one-node ONNX model: its input at the shape the layer sees in the model (static shape
inference at the profiled batch), its weight sliced to a kept width. Two sweeps per layer:

    out-sweep: k_out of C_out output channels kept, all C_in inputs     -> L_out(k_out)
    in-sweep:  k_in of C_in input channels kept, all C_out outputs      -> L_in(k_in)

over a grid of kept counts (:func:`kept_grid`): the multiples of 8 up to the width (at most 12 of
them) and the width -- the counts the width rounding keeps -- plus a few counts that are not
multiples of 8, recorded but not interpolated (:func:`curve_points`). A width of 8 or less gets
every eighth. A depthwise conv has one sweep (its inputs are its outputs); a grouped conv and a
layer that does not fit the shapes handled here are timed at full width only and say why.

Why only the multiples of 8 are interpolated: onnxruntime's CPU convs run in its NCHWc layout
(blocks of 8 channels on AVX2) only at multiples of the block. At other counts a one-node conv
takes another kernel with other costs (on the digits mobilenet at batch 64, a depthwise conv with
29 of 96 channels 0.54 ms, with 24 or 48 of them 0.10 and 0.14 ms; a 1x1 conv with 9 of its 16
inputs 0.20 ms, with all 16 0.48 ms, since it skips the reorders). The old grid, k/8 of the width,
put half of a 96-wide layer's points at such counts (12, 36, 60, 84), and the curve read a pruned
model's 40 channels off the 36 and 48 points: the depthwise conv at 40 of 96 at 0.64 of its full
latency, where timed alone at 40 it took 0.33.

All widths of one layer are timed *interleaved* in one :func:`~onnxprune.measure.latency.measure_latency`
call (warm-up, then alternating rounds; p50, p90 and the spread), together with the whole model as
a reference. On a loaded machine the load changes from layer to layer, so every layer's figures are
rescaled by ``whole_p50 / reference_p50 of that layer`` (the median whole-model p50 over all layers
divided by the one measured alongside this layer): what is kept is each layer's latency *relative to
the whole model under the same load*, expressed in ms of the median whole-model figure.

``clock="cpu"`` (``--clock cpu``; CPU provider, one thread) times each call by the calling thread's
CPU time (``time.thread_time_ns``) instead of the wall clock. onnxruntime runs a one-thread CPU
session on the caller's thread, so this is the call's compute without the time the OS scheduler
kept it off the core: on this project's shared machine (2 cores, load average 10-11) the digits
resnet at batch 64 took 23.4 ms wall but 3.7 ms CPU per call (its kernels sum to 3.3 ms in
onnxruntime's profiler), and a pruned copy 1.9 ms wall and 1.7 ms CPU: a call longer than a
scheduler slice is preempted, a short one often is not, so wall-clock ratios were meaningless
there. On a dedicated target device use the default wall clock.

The table also records the non-prunable remainder:

    remainder = L(whole model) - sum_layers L_layer(full width)

It is what the layers' one-node models do not cover (activations, pooling, additions, per-call
overhead of the whole model) minus what they double count (each one-node model pays its own per-call
overhead); it may be negative. :mod:`onnxprune.methods._support.latency_table` reads the table.

A constant remainder predicted the digits samples' pruned latency 6-18% off (thread CPU time): a
one-node conv also pays onnxruntime's layout reorders (NCHW <-> NCHWc) and misses the fusions it
gets in the model, costs that shrink with the widths (resnet: layers 4.3 ms, model 3.2 ms). So when
the channel-group analysis is importable (``onnxprune.passes``, which needs onnx-ir), the whole model
is also timed uniformly pruned -- every prunable group keeping its first ``f * size`` channels
rounded to a multiple of 8 (:func:`uniform_kept`), for f in :data:`CALIBRATION_FRACTIONS` -- and
the table's layer sum S(f) is mapped onto the measured
whole-model latency through those points and the full model:

    L_model ~ C(S)     C piecewise-linear through the points (S(f), L_model(f)), made
                       non-decreasing, extended past the ends along the end segments

which the resource then uses in place of ``remainder + S`` (a least-squares line
``offset + scale * S`` is recorded too). Without onnx-ir (a torch-free target
install) the calibration is skipped with a note and the constant remainder is used.

Torch-free: onnx, onnxruntime and numpy only (no channel-group analysis: each layer is keyed by its
node's name and output, and the pruning side maps its groups onto them).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import OnnxPruneError

log = logging.getLogger(__name__)

FORMAT = "onnxprune-latency-table/1"
CALIBRATION_FRACTIONS = (0.75, 0.5, 0.25)
CALIBRATION_SECONDS, CALIBRATION_MIN_RUNS = 12, 50  # the calibration's budget, in --seconds, and its runs
PROFILED_OPS = ("Conv", "Gemm", "MatMul")


@dataclasses.dataclass
class Layer:
    """A prunable layer of the model: where its channels lie and what input it sees."""

    node: onnx.NodeProto
    index: int  # position in graph.node
    weight: np.ndarray
    bias: np.ndarray | None
    input_shape: tuple[int, ...]
    out_axis: int  # weight axis of the output channels
    in_axis: int | None  # weight axis of the input channels (None: not sliceable)
    full_out: int
    full_in: int
    depthwise: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


def kept_grid(width: int, eighths: int = 8, odd: Sequence[float] = (0.3, 0.55, 0.8), align: int = 8,
              max_aligned: int = 12) -> list[int]:
    """Kept counts to time for a layer of ``width`` channels.

    A width of at most ``align``: every count k/8 of the width (k = 1..8). Wider: the multiples of
    ``align`` (at most ``max_aligned`` of them, evenly spread, 8 and the width always in) -- the
    counts the width rounding can keep (:data:`onnxprune.methods._support.latency_table.ALIGN`), so
    the curve that predicts them interpolates only counts of the same kind -- and, for widths of
    16 or more, a few counts that are not multiples of 8 (fractions ``odd`` of the width moved off
    the multiple of 8), so the table records how much an odd count costs."""
    if width <= align:
        counts = {max(1, round(width * k / eighths)) for k in range(1, eighths + 1)}
    else:
        multiples = list(range(align, width + 1, align))
        if len(multiples) > max_aligned:
            picks = np.linspace(0, len(multiples) - 1, max_aligned).round().astype(int)
            multiples = [multiples[i] for i in sorted(set(picks))]
        counts = {*multiples, width}
    if width >= 16:
        for frac in odd:
            k = max(1, round(width * frac))
            counts.add(k + 1 if k % align == 0 else k)
    return sorted(c for c in counts if 1 <= c <= width)


def aligned(kept: int, full: int, align: int = 8) -> bool:
    """Whether ``kept`` of ``full`` channels is a count the width rounding can keep: a multiple
    of ``align``, the whole width, or any count of a layer no wider than ``align``."""
    return full <= align or kept % align == 0 or kept == full


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def find_layers(model: onnx.ModelProto) -> list[Layer]:
    """The prunable layers of ``model`` (static shapes already inferred, :func:`infer_static_shapes`)."""
    from onnxprune.graph.shapes import static_shape_map

    shapes, consts = static_shape_map(model), _constants(model)
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in PROFILED_OPS or len(node.input) < 2 or node.input[1] not in consts:
            continue
        weight = consts[node.input[1]]
        bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            continue  # a bias computed in the graph: cannot be cut out alone
        x_shape = shapes.get(node.input[0])
        if x_shape is None or weight.dtype != np.float32:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            group = int(attrs.get("group", 1))
            c_out, c_in = weight.shape[0], x_shape[1]
            if group == 1:
                layers.append(Layer(node, index, weight, bias, x_shape, 0, 1, c_out, c_in))
            elif group == c_in == c_out and weight.shape[1] == 1:
                layers.append(Layer(node, index, weight, bias, x_shape, 0, None, c_out, c_in, depthwise=True))
            else:
                layers.append(Layer(node, index, weight, bias, x_shape, 0, None, c_out, c_in,
                                    note=f"grouped conv (group={group}): timed at full width only"))
        elif node.op_type == "Gemm":
            if attrs.get("transA", 0) or weight.ndim != 2:
                continue
            trans_b = int(attrs.get("transB", 0))
            out_axis, in_axis = (0, 1) if trans_b else (1, 0)
            layers.append(Layer(node, index, weight, bias, x_shape, out_axis, in_axis,
                                weight.shape[out_axis], weight.shape[in_axis]))
        elif weight.ndim == 2:  # MatMul x[..., K] @ W[K, N]
            layers.append(Layer(node, index, weight, None, x_shape, 1, 0, weight.shape[1], weight.shape[0]))
    return layers


def single_layer_model(layer: Layer, k_out: int, k_in: int, opset: int) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """The layer alone with ``k_out`` output and ``k_in`` input channels kept (the first ones:
    latency does not depend on which); returns the model and its input's shape."""
    w = layer.weight
    w = np.take(w, np.arange(k_out), axis=layer.out_axis)
    x_shape = list(layer.input_shape)
    attrs = [a for a in layer.node.attribute]
    if layer.depthwise:
        k_in = k_out
        x_shape[1] = k_out
        attrs = [a for a in attrs if a.name != "group"] + [helper.make_attribute("group", k_out)]
    elif k_in != layer.full_in:
        if layer.in_axis is None:
            raise ValueError(f"{layer.name}: input side not sliceable")
        w = np.take(w, np.arange(k_in), axis=layer.in_axis)
        x_shape[1 if layer.node.op_type == "Conv" else -1] = k_in
    inits = [numpy_helper.from_array(np.ascontiguousarray(w), "W")]
    inputs = ["x", "W"]
    if layer.bias is not None:
        b = layer.bias
        if b.ndim >= 1 and b.shape[-1] == layer.full_out:
            b = b[..., :k_out]
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b), "B"))
        inputs.append("B")
    node = helper.make_node(layer.node.op_type, inputs, ["y"], name=layer.name)
    node.attribute.extend(attrs)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    # the output's shape from inference: a valid model (onnx.checker) without computing it here
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), tuple(x_shape)


@dataclasses.dataclass(frozen=True)
class Timing:
    name: str
    p50_ms: float
    p90_ms: float
    runs: int


def time_cpu(models: Sequence[onnx.ModelProto], feeds: Sequence[dict], seconds: float, min_runs: int = 20,
             warmup: int = 5, names: Sequence[str] | None = None) -> list[Timing]:
    """Per-call thread CPU time of one-thread CPU sessions, interleaved (A B, B A, ...) until
    ``seconds`` of wall time have passed and each model has ``min_runs`` calls."""
    import time

    from onnxprune.measure.latency import create_session

    sessions = [create_session(m, "cpu", 1) for m in models]
    runs = [lambda s=s, f=dict(f): s.run(None, f) for s, f in zip(sessions, feeds)]
    for run in runs:
        for _ in range(warmup):
            run()
    times: list[list[int]] = [[] for _ in runs]
    order = list(range(len(runs)))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(t) for t in times) < min_runs:
        for i in order:
            start = time.thread_time_ns()
            runs[i]()
            times[i].append(time.thread_time_ns() - start)
        order.reverse()
    names = list(names) if names is not None else [f"model{i}" for i in range(len(runs))]
    out = []
    for name, t in zip(names, times):
        ms = np.asarray(t, dtype=np.float64) / 1e6
        out.append(Timing(name, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), len(t)))
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(provider: str) -> str:
    if provider == "cpu":
        return cpu_model()
    from onnxprune.measure.latency import cuda_status

    return cuda_status()[1]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _whole_model_inputs(model: onnx.ModelProto, batch: int, input_shapes: dict | None):
    from onnxprune.graph.shapes import resolve_input_shapes

    shapes = resolve_input_shapes(model, input_shapes or {})
    return {name: (batch, *shape[1:]) if shape else shape for name, shape in shapes.items()}


def profile_model(model: onnx.ModelProto | str | os.PathLike, *, providers: Sequence[str] = ("cpu",),
                  batches: Sequence[int] = (1,), threads: int | None = 1, seconds: float = 0.6,
                  min_runs: int = 20, warmup: int = 5, input_shapes: dict | None = None,
                  layers: Sequence[str] | None = None, seed: int = 0, clock: str = "wall",
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Times every prunable layer over its kept-width grid; returns the table (a JSON-ready dict,
    module docstring). ``seconds`` is the time budget of one layer's interleaved sweep; ``layers``
    limits the profile to those node names."""
    import onnxruntime as ort

    from onnxprune.graph.modelio import load_model
    from onnxprune.graph.shapes import infer_static_shapes, random_feeds
    from onnxprune.importing.normalize import normalize
    from onnxprune.measure.latency import resolve_batch, resolve_threads

    if clock not in ("wall", "cpu"):
        raise OnnxPruneError(f"--clock: {clock!r} is neither wall nor cpu")
    if clock == "cpu" and (list(providers) != ["cpu"] or resolve_threads(threads) != 1):
        raise OnnxPruneError("--clock cpu times the calling thread: it needs --providers cpu and --threads 1")
    path = None
    if not isinstance(model, onnx.ModelProto):
        path, model = os.fspath(model), load_model(model)
    model = normalize(model)  # Constant weights become initializers, as the pruning side sees them
    opset = _opset(model)
    rng = np.random.default_rng(seed)
    table: dict[str, Any] = {
        "format": FORMAT, "model": path, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "threads": resolve_threads(threads), "clock": clock, "seconds_per_layer": seconds, "profiles": [],
        "notes": {"p50_ms": "per-call latency of the one-node model, rescaled to the median whole-model p50 "
                            "(the whole model is timed interleaved with every layer's sweep)",
                  "remainder_ms": "whole-model p50 minus the sum of the layers' full-width p50 (may be negative)",
                  "sweeps": "out: k output channels kept, all inputs; in: k input channels kept, all outputs"},
    }
    for provider in providers:
        for batch in batches:
            batch = resolve_batch([model], batch)
            shapes_in = _whole_model_inputs(model, batch, input_shapes)
            shaped = infer_static_shapes(model, shapes_in)
            every = find_layers(shaped)
            unknown = sorted(set(layers or ()) - {layer.name for layer in every})
            if unknown:
                raise OnnxPruneError(f"--layers: no prunable layer named {', '.join(map(repr, unknown))} (the "
                                     f"prunable layers are {', '.join(layer.name for layer in every) or 'none'})")
            found = [layer for layer in every if layers is None or layer.name in layers]
            if not found:
                raise OnnxPruneError("no prunable layer (Conv, Gemm or MatMul with a constant weight) to profile")
            whole_feeds = random_feeds(model, shapes_in, seed)
            entries, refs = [], []
            for i, layer in enumerate(found):
                if progress:
                    progress(f"{provider} batch {batch}: layer {i + 1}/{len(found)} {layer.name} "
                             f"({layer.node.op_type}, {layer.full_out} out x {layer.full_in} in)")
                entry, ref = _profile_layer(layer, model, whole_feeds, opset, provider, batch, threads, seconds,
                                            min_runs, warmup, rng, clock)
                entries.append(entry)
                refs.append(ref)
            whole = statistics.median(refs)
            for entry, ref in zip(entries, refs):  # every layer in ms of the median whole-model p50
                scale = whole / ref
                entry["load_scale"] = round(scale, 4)
                for sweep in entry["sweeps"].values():
                    for point in sweep:
                        point["p50_ms"] = point["p50_ms"] * scale
                        point["p90_ms"] = point["p90_ms"] * scale
                entry["full_p50_ms"] = full_latency(entry)
            layer_sum = sum(entry["full_p50_ms"] for entry in entries)
            calibration = _calibrate(model, entries, whole_feeds, provider, batch, threads, seconds, min_runs,
                                     warmup, clock, whole, progress)
            table["profiles"].append({
                "provider": provider, "device": _device_name(provider), "batch": batch,
                "input_shapes": {k: list(v) for k, v in shapes_in.items()},
                "model_p50_ms": whole, "model_p50_spread_ms": [min(refs), max(refs)],
                "layers_sum_ms": layer_sum, "remainder_ms": whole - layer_sum, "calibration": calibration,
                "layers": entries,
            })
    return table


def _profile_layer(layer: Layer, model, whole_feeds, opset, provider, batch, threads, seconds, min_runs, warmup,
                   rng, clock) -> tuple[dict[str, Any], float]:
    """One layer's sweeps, timed interleaved with the whole model; (entry, whole-model p50)."""
    from onnxprune.measure.latency import batch_feeds, measure_latency

    plan: list[tuple[str, int, int]] = [("out", k, layer.full_in) for k in kept_grid(layer.full_out)]
    note = layer.note
    if layer.in_axis is not None and not layer.depthwise:
        # the full width once more, in the in-sweep: each sweep's ratios come from its own points
        plan += [("in", layer.full_out, k) for k in kept_grid(layer.full_in)]
    elif not layer.depthwise and not note:
        note = "input side not sliceable: out-sweep only"
    if layer.note:  # grouped conv: full width only
        plan = [("out", layer.full_out, layer.full_in)]
    # in a shuffled order: timed in plan order, the in-sweep (the second half of the list) ran
    # 10-15% faster than the out-sweep on the digits mlp's 100x300 Gemm, and its full-width point,
    # shared from the out-sweep, put a step of that size between 296 and 300 inputs
    plan = [plan[i] for i in rng.permutation(len(plan))]
    models, feeds, names = [model], [whole_feeds], ["whole"]
    for side, k_out, k_in in plan:
        single, x_shape = single_layer_model(layer, k_out, k_in, opset)
        models.append(single)
        feeds.append({"x": rng.standard_normal(x_shape).astype(np.float32)})
        names.append(f"{side}{k_out}x{k_in}")
    if clock == "cpu":
        stats = time_cpu(models, [batch_feeds(f, batch) for f in feeds], seconds, min_runs, warmup, names)
        return _entry(layer, plan, stats, note), stats[0].p50_ms
    stats = measure_latency(models, feeds, provider=provider, threads=threads, batch=batch, seconds=seconds,
                            min_runs=min_runs, warmup=warmup, memory_runs=0, names=names,
                            block_seconds=min(0.05, seconds / (4 * len(models))))  # >= 4 interleaved rounds
    return _entry(layer, plan, stats, note), stats[0].p50_ms


def _entry(layer: Layer, plan, stats, note: str) -> dict[str, Any]:
    sweeps: dict[str, list[dict[str, Any]]] = {"out": [], "in": []}
    for (side, k_out, k_in), s in sorted(zip(plan, stats[1:]), key=lambda ps: ps[0]):
        kept = k_out if side == "out" else k_in
        sweeps[side].append({"kept": kept, "p50_ms": s.p50_ms, "p90_ms": s.p90_ms, "runs": s.runs})
    entry = {"node": layer.name, "output": layer.node.output[0], "op": layer.node.op_type,
             "full_out": layer.full_out, "full_in": layer.full_in, "depthwise": layer.depthwise,
             "input_shape": list(layer.input_shape), "sweeps": {k: v for k, v in sweeps.items() if v}}
    if note:
        entry["note"] = note
    return entry


def full_latency(entry: dict) -> float:
    """A layer's full-width latency: the mean of its sweeps' full-width points (timed once in each)."""
    ends = [sweep[-1]["p50_ms"] for sweep in entry["sweeps"].values()]
    return float(sum(ends) / len(ends))


def curve_points(points: Sequence[dict], full: int) -> list[dict]:
    """The points of a sweep that its latency curve interpolates: the :func:`aligned` counts where
    there are two or more of them (the width rounding keeps only those; an odd count's reorders
    and slower kernels say nothing about the multiples of 8 next to it), else all."""
    kept = [p for p in points if aligned(p["kept"], full)]
    return kept if len(kept) >= 2 else list(points)


def _sweep_curve(points: list[dict], full: int) -> tuple[np.ndarray, np.ndarray]:
    points = curve_points(points, full)
    x = np.asarray([p["kept"] for p in points], dtype=np.float64) / full
    y = np.asarray([p["p50_ms"] for p in points], dtype=np.float64)
    order = np.argsort(x)
    return x[order], np.minimum.accumulate(y[order][::-1])[::-1]  # the suffix minimum, as latency_table


def layers_sum(entries: Sequence[dict], widths: dict[str, tuple[int, int]]) -> float:
    """The table's sum over layers at ``widths`` (node -> (kept in, kept out)), numpy only: the same
    separable model as :mod:`onnxprune.methods._support.latency_table` (widths inside the grid)."""
    total = 0.0
    for entry in entries:
        w = widths.get(entry["node"], widths.get(entry["output"]))
        if w is None:
            continue
        k_in, k_out = w
        # lat = L * P_out(f_out) / P_out(1) * P_in(f_in) / P_in(1): each sweep read as ratios
        lat = entry["full_p50_ms"]
        x, y = _sweep_curve(entry["sweeps"]["out"], entry["full_out"])
        if len(x) > 1:
            lat *= float(np.interp(k_out / entry["full_out"], x, y)) / y[-1]
        if "in" in entry["sweeps"] and not entry["depthwise"]:
            x, y = _sweep_curve(entry["sweeps"]["in"], entry["full_in"])
            lat *= float(np.interp(k_in / entry["full_in"], x, y)) / y[-1]
        total += lat
    return total


def uniform_kept(fraction: float, size: int, align: int = 8) -> int:
    """A group's kept count in the calibration's pruned copies of the model: ``fraction * size``
    rounded to a multiple of ``align`` (at least ``align``; groups no larger keep
    ``fraction * size``), as the width rounding keeps them. Unaligned counts made the calibration
    wrong: on the digits mobilenet at batch 64 (thread CPU time), every group at 3/4 (12 of 16, 18
    of 24, ...) took 1.60 ms against 1.44 ms at multiples of 8, so the map C read pruned models,
    which keep multiples of 8, too slow: re-timing only these points at multiples of 8 took three
    pruned models' errors from +35%, +35%, +13% to +8%, +24%, -9%."""
    k = max(1, round(fraction * size))
    if size > align:
        k = min(size, max(align, align * round(k / align)))
    return k


def _calibrate(model, entries, whole_feeds, provider, batch, threads, seconds, min_runs, warmup, clock, whole,
               progress) -> dict[str, Any]:
    """offset and scale of ``L_model ~ offset + scale * S`` from uniformly pruned copies of the
    whole model (module docstring); a note instead where the passes cannot be imported or applied."""
    try:
        from onnxprune.passes.apply import apply_plan
        from onnxprune.passes.groups import analyze
        from onnxprune.passes.plan import PruningPlan
    except ImportError as exc:
        return {"note": f"not calibrated: the channel-group analysis needs {exc.name} (constant remainder used)"}
    from onnxprune.measure.latency import batch_feeds, measure_latency

    if progress:
        progress(f"{provider} batch {batch}: calibrating on the whole model at widths "
                 f"{', '.join(f'{f:g}' for f in CALIBRATION_FRACTIONS)}")
    try:
        analysis = analyze(model)
        groups = [g for g in analysis.groups if g.prunable and g.size > 1]
        pruned, kept = [], [{g.id: g.size for g in groups}]
        for f in CALIBRATION_FRACTIONS:
            kept.append({g.id: uniform_kept(f, g.size) for g in groups})
            plan = PruningPlan(kept={gid: tuple(range(k)) for gid, k in kept[-1].items()})
            pruned.append(apply_plan(model, plan, analysis=analysis))
    except OnnxPruneError as exc:
        return {"note": f"not calibrated: the uniformly pruned models could not be built ({exc})"}
    models = [model, *pruned]
    # longer than a layer's sweep: these four points map every prediction (on the digits mobilenet
    # at 4 x 0.3 s, the 3/4 point's ratio to the full model came out 0.74 to 0.83 in four profiles)
    budget, runs = CALIBRATION_SECONDS * seconds, max(min_runs, CALIBRATION_MIN_RUNS)
    if clock == "cpu":
        stats = time_cpu(models, [batch_feeds(whole_feeds, batch)] * len(models), budget, runs, warmup)
    else:
        stats = measure_latency(models, whole_feeds, provider=provider, threads=threads, batch=batch,
                                seconds=budget, min_runs=runs, warmup=warmup, memory_runs=0)
    measured = [whole * s.p50_ms / stats[0].p50_ms for s in stats]  # in ms of the median whole-model p50
    sums = [layers_sum(entries, _widths(m)) for m in models]
    scale, offset = np.polyfit(sums, measured, 1)
    points = [{"fraction": f, "layers_sum_ms": s, "model_ms": m, "kept": k}
              for f, s, m, k in zip((1.0, *CALIBRATION_FRACTIONS), sums, measured, kept)]
    if not scale > 0:
        return {"note": f"not calibrated: the fit was not increasing (scale {scale:.3g}); constant remainder used",
                "points": points}
    return {"offset_ms": float(offset), "scale": float(scale), "map": "piecewise-linear through points",
            "points": points}


def _widths(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Node name and output -> (kept in, kept out) from the weights' shapes (torch-free)."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type not in PROFILED_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        shape = weights[node.input[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            widths = (shape[1] * int(attrs.get("group", 1)), shape[0])
        elif node.op_type == "Gemm":
            widths = (shape[1], shape[0]) if attrs.get("transB", 0) else (shape[0], shape[1])
        elif len(shape) == 2:
            widths = (shape[0], shape[1])
        else:
            continue
        for key in (node.name, node.output[0]):
            out.setdefault(key, widths)
    return out
