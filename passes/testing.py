"""Helpers for checking rewrites: tiny models from ONNX text, random plans, exactness checks.

Used by the tests and the benchmarks; nothing here is needed to prune a model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph.sessions import make_session
from onnxprune.passes.apply import apply_plan
from onnxprune.passes.groups import GroupAnalysis, analyze
from onnxprune.passes.masking import masked_reference
from onnxprune.passes.plan import PruningPlan

ATOL, RTOL = 1e-5, 1e-4


def model_from_text(text: str, seed: int = 0) -> onnx.ModelProto:
    """Parse ONNX text; weights declared without a value (``<float[8,3,3,3] w>``) get random ones.

    Names containing ``var`` get values in [0.5, 2] (BatchNormalization variances).
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    declared = list(model.graph.value_info)
    model.graph.ClearField("value_info")
    for info in declared:
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if "var" in info.name:
            array = rng.uniform(0.5, 2.0, shape)
        else:
            array = rng.standard_normal(shape) * 0.5
        model.graph.initializer.append(numpy_helper.from_array(array.astype(dtype), info.name))
    onnx.checker.check_model(model, full_check=True)
    return model


def random_plan(analysis: GroupAnalysis, seed: int = 0, fraction: float = 0.5, branch_fraction: float = 0.0,
                empty_fraction: float = 0.0) -> PruningPlan:
    """Keep a random ``1 - fraction`` of every prunable group's channels; drop some branches."""
    rng = np.random.default_rng(seed)
    kept = {}
    for group in analysis.prunable_groups:
        if group.branch is not None and rng.random() < empty_fraction:
            kept[group.id] = ()
            continue
        run = group.size // group.chunks  # grouped Conv outputs: the same count in every run
        count = max(1, int(round(run * (1 - fraction))))
        kept[group.id] = tuple(sorted(j * run + c for j in range(group.chunks)
                                      for c in rng.choice(run, count, replace=False).tolist()))
    dropped = tuple(b.id for b in analysis.residual_branches if rng.random() < branch_fraction)
    return PruningPlan(kept=kept, dropped_branches=dropped)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, threads=1).run(None, feeds)


def random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


@dataclasses.dataclass
class Checked:
    pruned: onnx.ModelProto
    analysis: GroupAnalysis
    max_abs: float
    predicted_macs: int
    macs: int


def check_exact(model: onnx.ModelProto, plan: PruningPlan, input_shapes: dict[str, tuple[int, ...]] | None = None,
                analysis: GroupAnalysis | None = None, seed: int = 0,
                feeds: dict[str, np.ndarray] | None = None) -> Checked:
    """Apply ``plan``; assert the checker passes, outputs equal the masked reference, MACs as predicted.

    ``feeds``: the inputs to compare on (token ids need real ones); random normal by default."""
    from onnxprune.graph.macs import count_macs

    onnx.checker.check_model(model, full_check=True)
    analysis = analysis or analyze(model, input_shapes)
    pruned = apply_plan(model, plan, analysis.input_shapes, analysis=analysis)
    onnx.checker.check_model(pruned, full_check=True)
    reference = masked_reference(model, plan, analysis)
    feeds = random_feeds(model, analysis.input_shapes, seed) if feeds is None else feeds
    expected, actual = run(reference, feeds), run(pruned, feeds)
    worst = 0.0
    for e, a in zip(expected, actual):
        assert e.shape == a.shape, f"output shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)
        worst = max(worst, float(np.max(np.abs(a - e))) if e.size else 0.0)
    predicted = analysis.predicted_macs(plan)
    macs = count_macs(pruned, analysis.input_shapes).total_macs
    return Checked(pruned, analysis, worst, predicted, macs)


def initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {init.name: tuple(init.dims) for init in model.graph.initializer}


# --- random graphs for property tests ------------------------------------------------------

BLOCKS = ("conv", "residual", "depthwise", "squeeze_excite", "concat", "inverted_residual", "maxpool",
          "silu", "hardswish", "leaky", "grouped")


class _GraphWriter:
    """Writes an ONNX-text model block by block; ``x`` [1, C, S, S] flows through."""

    def __init__(self, channels: int, size: int) -> None:
        self.lines: list[str] = []
        self.decl: list[str] = []
        self.count = 0
        self.value, self.channels, self.size = "x", channels, size

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def weight(self, shape: tuple[int, ...], prefix: str = "w") -> str:
        name = self.name(prefix)
        self.decl.append(f"float[{','.join(map(str, shape))}] {name}")
        return name

    def op(self, text: str, prefix: str = "v") -> str:
        out = self.name(prefix)
        self.lines.append(f"{out} = {text}")
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int, group: int = 1, bias: bool = False) -> str:
        w = self.weight((c_out, c_in // group, k, k))
        b = f", {self.weight((c_out,), 'k')}" if bias else ""
        pad = (k - 1) // 2
        return self.op(f"Conv <group={group}, pads=[{pad},{pad},{pad},{pad}]> ({x}, {w}{b})")

    def bn(self, x: str, c: int) -> str:
        s, b, m = (self.weight((c,), p) for p in ("s", "b", "m"))
        var = self.weight((c,), "var")
        return self.op(f"BatchNormalization ({x}, {s}, {b}, {m}, {var})")

    def relu6(self, x: str) -> str:
        if "zero6" not in " ".join(self.decl):
            self.decl += ["float zero6 = {0.0}", "float six6 = {6.0}"]
        return self.op(f"Clip ({x}, zero6, six6)")

    def block(self, kind: str, width: int) -> None:
        x, c = self.value, self.channels
        if kind == "conv":
            self.value = self.op(f"Relu ({self.bn(self.conv(x, c, width, 3), width)})")
            self.channels = width
        elif kind == "residual":
            h = self.op(f"Relu ({self.bn(self.conv(x, c, width, 3), width)})")
            t = self.bn(self.conv(h, width, c, 3), c)
            self.value = self.op(f"Relu ({self.op(f'Add ({x}, {t})')})")
        elif kind == "depthwise":
            self.value = self.relu6(self.bn(self.conv(x, c, c, 3, group=c), c))
        elif kind == "squeeze_excite":
            pooled = self.op(f"GlobalAveragePool ({x})")
            hidden = self.op(f"Relu ({self.conv(pooled, c, max(1, width // 2), 1, bias=True)})")
            gate = self.op(f"HardSigmoid ({self.conv(hidden, max(1, width // 2), c, 1, bias=True)})")
            self.value = self.op(f"Mul ({x}, {gate})")
        elif kind == "concat":
            a = self.op(f"Relu ({self.bn(self.conv(x, c, width, 3), width)})")
            b = self.op(f"Relu ({self.conv(x, c, c, 1, bias=True)})")
            self.value, self.channels = self.op(f"Concat <axis=1> ({a}, {b})"), width + c
        elif kind == "inverted_residual":
            e = self.relu6(self.bn(self.conv(x, c, width, 1), width))
            d = self.relu6(self.bn(self.conv(e, width, width, 3, group=width), width))
            self.value = self.op(f"Add ({x}, {self.bn(self.conv(d, width, c, 1), c)})")
        elif kind == "maxpool" and self.size >= 4:
            self.value = self.op(f"MaxPool <kernel_shape=[2,2], strides=[2,2]> ({x})")
            self.size //= 2
        elif kind == "silu":
            t = self.bn(self.conv(x, c, width, 1), width)
            self.value, self.channels = self.op(f"Mul ({t}, {self.op(f'Sigmoid ({t})')})"), width
        elif kind == "hardswish":
            self.value = self.op(f"HardSwish ({self.bn(self.conv(x, c, width, 3), width)})")
            self.channels = width
        elif kind == "grouped":  # a 1x1 conv to an even width, then a 2-group 3x3 conv
            even = 2 * max(1, width // 2)
            e = self.op(f"Relu ({self.bn(self.conv(x, c, even, 1), even)})")
            self.value = self.op(f"Relu ({self.bn(self.conv(e, even, even, 3, group=2), even)})")
            self.channels = even
        elif kind == "leaky":
            self.value = self.op(f"LeakyRelu <alpha=0.1> ({self.conv(x, c, width, 3, bias=True)})")
            self.channels = width

    def head(self, flatten: bool, hidden: int) -> str:
        c = self.channels
        if flatten:
            f = self.op(f"Flatten ({self.value})")
            features = c * self.size * self.size
        else:
            f = self.op(f"Flatten ({self.op(f'GlobalAveragePool ({self.value})')})")
            features = c
        w, k = self.weight((hidden, features)), self.weight((hidden,), "k")
        h = self.op(f"Relu ({self.op(f'Gemm <transB=1> ({f}, {w}, {k})')})")
        w2, k2 = self.weight((hidden, 10)), self.weight((10,), "k")
        self.lines.append(f"y = Gemm ({h}, {w2}, {k2})")
        return "\n".join([
            '<ir_version: 8, opset_import: ["" : 17]>',
            "g (float[1,3,8,8] x) => (float[1,10] y)",
            f"<{', '.join(self.decl)}>",
            "{", *("  " + line for line in self.lines), "}",
        ])


def random_graph(blocks: list[str], widths: list[int], flatten: bool, hidden: int, seed: int = 0) -> onnx.ModelProto:
    """A model [1, 3, 8, 8] -> [1, 10] built from ``blocks`` (see BLOCKS) of the given widths."""
    writer = _GraphWriter(3, 8)
    writer.value = writer.op(f"Relu ({writer.bn(writer.conv('x', 3, widths[0], 3), widths[0])})")
    writer.channels = widths[0]
    for kind, width in zip(blocks, widths[1:] + widths[:1] * len(blocks)):
        writer.block(kind, width)
    return model_from_text(writer.head(flatten, hidden), seed)
