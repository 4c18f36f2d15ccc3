"""Channel groups: which channels, units and residual branches can be removed, and together with what.

Every node is visited once in topological order and handed to its op rule
(:mod:`onnxprune.passes.rules`). A producer (Conv, Gemm, MatMul with a constant weight) opens a
*space* of channels; rules carry a value's channels to the outputs; a residual Add or a
squeeze-excite Mul merges the spaces of its two inputs (union-find), Concat lines spaces up at
channel offsets. A group is one union-find class: its channels are kept or removed together in
every producer, consumer, per-channel parameter and shape constant listed for it. The work is
linear in the graph size.

A group is prunable when removing a channel is exact against the masked reference (the model
with the channel's gate tensors zeroed): at every consumer the removed channel is 0, or a uniform
constant that folds into the consumer's bias. Otherwise, or when an op without a rule touches
the channels, the group is frozen and ``reason`` says why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterable

import onnx
import onnx_ir as ir

import onnxprune.passes.rules  # noqa: F401  (registers the op rules)
from onnxprune.graph.names import OnnxNames
from onnxprune.passes.analysis import AnalysisOptions, GroupAnalysis, name_nodes, unique_node_names
from onnxprune.passes.heads import head_units
from onnxprune.passes.residual_branches import find_residual_branches
from onnxprune.passes.rules.core import GateTree, Layout, RuleContext, Segment, lookup
from onnxprune.passes.structures import (
    ChannelGroup,
    FoldSite,
    IntEdit,
    MacTerm,
    PaddedNorm,
    Piece,
    ResidualBranch,
    State,
    TensorAxis,
)

log = logging.getLogger(__name__)


class _Space:
    """Channels opened by one producer; merged spaces share their lists through the root."""

    def __init__(self, sid: int, size: int, name: str) -> None:
        self.id, self.size, self.name = sid, size, name
        self.chunks = 1
        self.slices: list[TensorAxis] = []
        self.consumers: list[TensorAxis] = []
        self.gates: list[GateTree] = []
        self.activations: list[str] = []
        self.reasons: list[str] = []
        self.dead_tests: list[TensorAxis] = []
        self.folds: list[FoldSite] = []
        self.nodes: list[str] = []
        self.approximate: list[str] = []

    def absorb(self, other: "_Space") -> None:
        if 1 not in (self.chunks, other.chunks) and self.chunks != other.chunks:
            self.reasons.append(f"grouped Convs with {self.chunks} and {other.chunks} groups share channels")
        self.chunks = max(self.chunks, other.chunks)
        for field in ("slices", "consumers", "gates", "activations", "reasons", "dead_tests", "folds", "nodes",
                      "approximate"):
            getattr(self, field).extend(getattr(other, field))


class _Builder(RuleContext):
    def __init__(self, graph: ir.Graph, shapes: dict[str, tuple[int, ...]], opset: int,
                 options: AnalysisOptions | None = None) -> None:
        self.graph, self.shapes, self.opset = graph, shapes, opset
        self.options = options or AnalysisOptions()
        self.cuts = channel_cuts(graph)  # producer output -> offsets where a Split/Slice cuts it
        self.heads = head_units(graph, shapes)  # producer output -> (head dim, chunk offsets)
        self.layouts: dict[str, Layout] = {}
        self.parent: list[int] = []
        self.spaces: list[_Space] = []
        self.edits: list[IntEdit] = []
        self.mac_in: dict[str, tuple[Piece, ...]] = {}
        self.mac_out: dict[str, tuple[Piece, ...]] = {}
        self.depthwise: set[str] = set()
        self.norm_pads: list[PaddedNorm] = []
        self._touched: set[str] = set()
        self._outputs = {v.name for v in graph.outputs}

    # union-find --------------------------------------------------------------------------
    def root(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def space(self, sid: int) -> _Space:
        return self.spaces[self.root(sid)]

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra  # the older space names the group
        self.parent[rb] = ra
        self.spaces[ra].absorb(self.spaces[rb])
        self.spaces[rb] = self.spaces[ra]

    # reading -----------------------------------------------------------------------------
    def layout(self, value):
        if value is None:
            return None
        self._touched.add(value.name)
        return self.layouts.get(value.name)

    def shape(self, value):
        return None if value is None else self.shapes.get(value.name)

    def const(self, value):
        if value is None or value.const_value is None:
            return None
        return value.const_value.numpy()

    def is_param(self, value):
        return value is not None and value.const_value is not None and not value.is_graph_input()

    def attr(self, name, default=None):
        attribute = self.node.attributes.get(name)
        return default if attribute is None else attribute.value

    # recording ---------------------------------------------------------------------------
    def set_layout(self, value, layout):
        if layout is None or value is None:
            return
        for seg in layout.segments:
            space = self.space(seg.space)
            space.activations.append(value.name)
        self.layouts[value.name] = layout
        if value.name in self._outputs:
            self.freeze(f"{value.name!r} is a graph output", layout)

    def produce(self, value, axis, weight, bias):
        cuts = sorted(c for c in self.cuts.get(value.name, ()) if 0 < c < weight.channels)
        heads = self.heads.get(value.name)
        if heads is not None and weight.block == 1 and (bias is None or bias.block == 1) and not cuts:
            # attention reads these columns per head: one unit is a head's d columns (and bias entries)
            d, offsets = heads
            weight = dataclasses.replace(weight, block=d)
            bias = None if bias is None else dataclasses.replace(bias, block=d)
            cuts = [c // d for c in offsets]
        if cuts and (bias is None or bias.block == weight.block):
            return self._produce_chunks(value, axis, weight, bias, cuts)
        sid = len(self.spaces)
        self.parent.append(sid)
        space = _Space(sid, weight.channels, weight.name)
        self.spaces.append(space)
        space.slices.append(weight)
        space.dead_tests.append(weight)
        space.nodes.append(self.node.name)
        gates = GateTree((weight,) if bias is None else (weight, bias))
        if bias is not None:
            space.slices.append(bias)
        rank = len(self.shape(value) or ()) or axis + 1
        layout = Layout(axis, rank, weight.block, (Segment(sid, weight.channels, State.ZERO, gates),))
        self.mac_out[self.node.name] = (Piece(str(sid), 0, weight.channels, weight.block),)
        self.set_layout(value, layout)
        return layout

    def _produce_chunks(self, value, axis, weight, bias, cuts):
        """A producer whose channels a Split or Slice cuts (C2f, CSP): one space per chunk, each
        a group of its own, named ``W[start:stop]`` (element offsets; a packed attention projection
        is cut into its Q, K and V chunks, each of heads of ``block`` columns)."""
        bounds = [0, *cuts, weight.channels]
        segments, pieces = [], []
        block = weight.block
        for start, stop in zip(bounds, bounds[1:]):
            sid = len(self.spaces)
            self.parent.append(sid)
            lo, hi = weight.start + start * block, weight.start + stop * block
            part = dataclasses.replace(weight, start=lo, stop=hi)
            space = _Space(sid, stop - start, f"{weight.name}[{start * block}:{stop * block}]")
            self.spaces.append(space)
            space.slices.append(part)
            space.dead_tests.append(part)
            space.nodes.append(self.node.name)
            tensors = (part,)
            if bias is not None:
                bias_part = dataclasses.replace(bias, start=bias.start + start * block, stop=bias.start + stop * block)
                space.slices.append(bias_part)
                tensors = (part, bias_part)
            segments.append(Segment(sid, stop - start, State.ZERO, GateTree(tensors)))
            pieces.append(Piece(str(sid), 0, stop - start, block))
        rank = len(self.shape(value) or ()) or axis + 1
        layout = Layout(axis, rank, block, tuple(segments))
        self.mac_out[self.node.name] = tuple(pieces)
        self.set_layout(value, layout)
        return layout

    def consume(self, layout, weight, axis, out_axis, foldable, value):
        pieces = []
        for seg, offset in zip(layout.segments, layout.offsets()):
            start = offset * layout.block
            ta = TensorAxis(weight, axis, start, start + seg.size * layout.block, layout.block)
            space = self.space(seg.space)
            space.gates.append(seg.gates)  # gates are taken where channels are read
            space.consumers.append(ta)
            space.nodes.append(self.node.name)
            space.folds.append(FoldSite(self.node.name, value.name, layout.axis, ta, out_axis, seg.gate, foldable))
            if seg.gate == State.VARYING or (seg.gate == State.UNIFORM and not foldable):
                self.freeze(f"{self.node.op_type} {self.node.name!r} reads a removed channel as a "
                            f"nonzero, non-foldable value", layout)
            pieces.append(Piece(str(seg.space), 0, seg.size, layout.block))
        self.mac_in[self.node.name] = tuple(pieces)

    def follow(self, layout, name, axis):
        out = []
        for seg, offset in zip(layout.segments, layout.offsets()):
            start = offset * layout.block
            ta = TensorAxis(name, axis, start, start + seg.size * layout.block, layout.block)
            self.space(seg.space).slices.append(ta)
            out.append(ta)
        return out

    def merge(self, a, b, multiply, gate=True):
        if a.rank - a.axis != b.rank - b.axis or a.block != b.block or [s.size for s in a.segments] != [
            s.size for s in b.segments
        ]:
            self.freeze(f"{self.node.op_type} {self.node.name!r} combines differently laid out channels", a, b)
            return None
        segs = []
        for sa, sb in zip(a.segments, b.segments):
            self.union(sa.space, sb.space)
            for side in (sa, sb):  # a product is zero where one side is: only zero sides gate it
                if gate and (not multiply or side.gate == State.ZERO):
                    self.space(sa.space).gates.append(side.gates)
            if multiply and State.ZERO in (sa.gate, sb.gate):
                gate = State.ZERO
            else:
                gate = max(sa.gate, sb.gate)
            segs.append(Segment(sa.space, sa.size, gate, sa.gates + sb.gates))
        wide = a if a.rank >= b.rank else b
        return dataclasses.replace(wide, segments=tuple(segs))

    def int_edit(self, layout, start, stop, block, input_index, entry, attribute="", node=None):
        pieces = []
        for seg, offset in zip(layout.segments, layout.offsets()):
            if offset >= start and offset + seg.size <= stop:
                pieces.append(Piece(str(seg.space), 0, seg.size, block))
        self.edits.append(IntEdit(node or self.node.name, input_index, entry, tuple(pieces), attribute))

    def scales(self, layout):
        """This node's MACs scale with ``layout``'s channels on a batch axis (attention's QK^T and AV
        scale with the kept heads), on the input side."""
        self.mac_in[self.node.name] = tuple(Piece(str(s.space), 0, s.size) for s in layout.segments)
        for seg in layout.segments:
            self.space(seg.space).nodes.append(self.node.name)

    def option(self, name):
        return getattr(self.options, name)

    def pad_norm(self, layout):
        """This LayerNormalization keeps the full width: its input is padded with zeros."""
        pieces = tuple(Piece(str(s.space), 0, s.size) for s in layout.segments)
        self.norm_pads.append(PaddedNorm(self.node.name, layout.rank, pieces))

    def approximate(self, reason, layout):
        """Removing these channels is allowed (an option asked for it) but not exact."""
        for seg in layout.segments:
            space = self.space(seg.space)
            if reason not in space.approximate:
                space.approximate.append(reason)

    def chunked(self, layout, chunks):
        """A grouped Conv's output: group j of the conv owns the j-th run of size/chunks channels."""
        for seg in layout.segments:
            space = self.space(seg.space)
            if 1 not in (space.chunks, chunks) and space.chunks != chunks:
                self.freeze(f"grouped Convs with {space.chunks} and {chunks} groups share channels", layout)
            space.chunks = max(space.chunks, chunks)

    def tie(self, layout):
        """A depthwise node: its input and output are the same channels (MACs scale once)."""
        self.depthwise.add(self.node.name)
        pieces = tuple(Piece(str(s.space), 0, s.size) for s in layout.segments)
        self.mac_in[self.node.name] = self.mac_out[self.node.name] = pieces
        for seg in layout.segments:
            self.space(seg.space).nodes.append(self.node.name)

    def freeze(self, reason, *layouts):
        for layout in layouts:
            if layout is None:
                continue
            for seg in layout.segments:
                space = self.space(seg.space)
                if reason not in space.reasons:
                    space.reasons.append(reason)

    # driving -----------------------------------------------------------------------------
    def visit(self, node: ir.Node) -> None:
        self.node = node
        self._touched = set()
        rule = lookup(node.op_type, self._opset_of(node), node.domain)
        inputs_with_layout = [v for v in node.inputs if v is not None and v.name in self.layouts]
        if rule is None:
            reason = f"no rule for op {node.op_type} (node {node.name!r})"
            self.freeze(reason, *(self.layouts[v.name] for v in inputs_with_layout))
            return
        try:
            rule(node, self)
        except Exception as exc:  # a model the rule did not foresee: freeze, never guess
            log.warning("rule for %s failed on node %r: %s", node.op_type, node.name, exc)
            touched = [self.layouts.get(v.name) for v in (*inputs_with_layout, *node.outputs) if v is not None]
            self.freeze(f"rule for {node.op_type} failed on {node.name!r} ({type(exc).__name__})", *touched)
            return
        for value in inputs_with_layout:
            if value.name not in self._touched:  # a rule that ignores a channel input is a bug
                self.freeze(f"{node.op_type} {node.name!r} ignores input {value.name!r}", self.layouts[value.name])

    def _opset_of(self, node: ir.Node) -> int:
        return self.graph.opset_imports.get(node.domain or "", self.opset)


# ops a producer's channels pass through unchanged on their way to a Split (C2f: Conv -> BN -> SiLU)
_PER_CHANNEL = {
    "BatchNormalization", "InstanceNormalization", "Relu", "LeakyRelu", "PRelu", "Tanh", "Erf", "Gelu",
    "HardSwish", "Elu", "Selu", "Softsign", "Neg", "Abs", "Identity", "Dropout", "Celu", "Mish", "Clip",
    "Sigmoid", "HardSigmoid", "Exp", "Softplus",
}


Run = tuple[int, ir.Value, int, int]  # (offset in the value, Conv output, first channel there, count)


def _conv(node: ir.Node) -> tuple[int, int] | None:
    """(group, C_out) of a Conv with a constant weight, else None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None:
        return None
    group = node.attributes.get("group")
    return (1 if group is None else group.value), weight.const_value.shape[0]


def _runs(value: ir.Value | None, memo: dict[int, list[Run] | None], depth: int = 0) -> list[Run] | None:
    """Where ``value``'s channels (axis 1) come from: runs of plain (group 1) Conv outputs, followed
    through per-channel ops, depthwise Convs and Concats (C2f, CSP, Ghost); None when unknown.
    ``memo`` keeps the walk linear (SiLU reads its input twice)."""
    if value is None:
        return None
    if id(value) not in memo:
        memo[id(value)] = None  # a cycle or a walk too deep stays unknown
        memo[id(value)] = _runs_of(value, memo, depth)
    return memo[id(value)]


def _runs_of(value: ir.Value, memo: dict[int, list[Run] | None], depth: int) -> list[Run] | None:
    node = value.producer()
    if node is None or depth > 64 or node.domain not in ("", "ai.onnx"):
        return None
    conv = _conv(node)
    if conv is not None:
        group, c_out = conv
        if group == 1:
            return [(0, value, 0, c_out)]
        inner = _runs(node.inputs[0], memo, depth + 1)  # depthwise: channel c is input channel c
        width = sum(run[3] for run in inner) if inner else None
        return inner if inner and group == c_out == width and node.inputs[1].const_value.shape[1] == 1 else None
    if node.op_type in _PER_CHANNEL:
        return _runs(node.inputs[0], memo, depth + 1)
    if node.op_type in ("Mul", "Add", "Sub", "Div") and len(node.inputs) == 2:
        a, b = node.inputs
        if b is not None and b.const_value is not None:
            return _runs(a, memo, depth + 1)
        if a is not None and a.const_value is not None and node.op_type != "Div":
            return _runs(b, memo, depth + 1)
        left, right = _runs(a, memo, depth + 1), _runs(b, memo, depth + 1)
        return left if left is not None and left == right else None  # SiLU: x * Sigmoid(x)
    if node.op_type in ("Split", "Slice"):  # a window of the input's runs
        inner = _runs(node.inputs[0], memo, depth + 1)
        if not inner:
            return None
        total = sum(run[3] for run in inner)
        rank = len(value.shape) if value.shape is not None else 4
        if node.op_type == "Slice":
            points = _slice_points(node, total, rank)
            if not points and _slice_points_axis(node, rank) != 1:
                return inner if _slice_points_axis(node, rank) is not None else None
            if not points:
                return None
            window = (points[0], points[1])
        else:
            bounds = [0, *_split_points(node, total, rank), total]
            index = next(i for i, out in enumerate(node.outputs) if out is value)
            if len(bounds) != len(node.outputs) + 1:
                return None
            window = (bounds[index], bounds[index + 1])
        return _window(inner, *window)
    if node.op_type == "Concat":
        axis = node.attributes.get("axis")
        rank = len(value.shape) if value.shape is not None else 4
        if axis is None or axis.value + (rank if axis.value < 0 else 0) != 1:
            return None
        runs, offset = [], 0
        for part in node.inputs:
            inner = _runs(part, memo, depth + 1)
            if inner is None:
                return None
            runs += [(offset + at, source, first, count) for at, source, first, count in inner]
            offset += sum(run[3] for run in inner)
        return runs
    return None


def _window(runs: list[Run], start: int, stop: int) -> list[Run] | None:
    """The runs of channels ``start:stop``, re-based at 0."""
    out = []
    for at, source, first, count in runs:
        lo, hi = max(at, start), min(at + count, stop)
        if lo < hi:
            out.append((lo - start, source, first + lo - at, hi - lo))
    return out or None


def _slice_points_axis(node: ir.Node, rank: int) -> int | None:
    """1 when the Slice has constant bounds that touch axis 1, another axis when they do not, or
    None when they are computed."""
    values = [v.const_value.numpy().reshape(-1) if v is not None and v.const_value is not None else None
              for v in list(node.inputs[1:4]) + [None] * (4 - len(node.inputs))]
    if values[0] is None or values[1] is None or (len(node.inputs) > 3 and node.inputs[3] is not None
                                                  and values[2] is None):
        return None
    axes = list(range(len(values[0]))) if values[2] is None else [int(a) + (rank if a < 0 else 0) for a in values[2]]
    return 1 if 1 in axes else -1


def channel_cuts(graph: ir.Graph) -> dict[str, set[int]]:
    """Conv outputs whose channels a Split (constant sizes) or Slice cuts on axis 1, with the
    channel offsets of the cuts in the Conv's output: each chunk becomes a group of its own (see
    ``_produce_chunks``)."""
    cuts: dict[str, set[int]] = {}
    memo: dict[int, list[Run] | None] = {}
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Split", "Slice") or not node.inputs:
            continue
        runs = _runs(node.inputs[0], memo)
        if not runs:
            continue
        total = sum(run[3] for run in runs)
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 4
        points = _split_points(node, total, rank) if node.op_type == "Split" else _slice_points(node, total, rank)
        _cut(cuts, runs, points)
    _align_merges(graph, cuts, memo)
    return cuts


def _cut(cuts: dict[str, set[int]], runs: list[Run], points: Iterable[int]) -> bool:
    """Cut the Convs of ``runs`` at the given channel offsets of the value; True if a cut is new."""
    new = False
    for point in points:
        for at, source, first, count in runs:
            if at < point < at + count:  # inside this run: cut its Conv there
                known = cuts.setdefault(source.name, set())
                new |= first + point - at not in known
                known.add(first + point - at)
    return new


def _boundaries(cuts: dict[str, set[int]], runs: list[Run]) -> set[int]:
    """Offsets in the value where its chunks (runs, and the cuts inside them) begin or end."""
    out = set()
    for at, source, first, count in runs:
        out |= {at, at + count} | {at + c - first for c in cuts.get(source.name, ()) if first < c < first + count}
    return out


def _align_merges(graph: ir.Graph, cuts: dict[str, set[int]], memo: dict[int, list[Run] | None]) -> None:
    """Two activations added or multiplied (a Ghost bottleneck's residual Add) tie channel for
    channel: each side is cut where the other side's chunks end, until nothing changes."""
    pairs = []
    for node in graph:
        if node.op_type in ("Add", "Sub", "Mul") and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
            a, b = node.inputs
            if a is None or b is None or a.const_value is not None or b.const_value is not None:
                continue
            left, right = _runs(a, memo), _runs(b, memo)
            if left and right and left != right and sum(r[3] for r in left) == sum(r[3] for r in right):
                pairs.append((left, right))
    for _ in range(16):  # each round only adds cuts; chains settle in a few
        changed = False
        for left, right in pairs:
            changed |= _cut(cuts, right, _boundaries(cuts, left))
            changed |= _cut(cuts, left, _boundaries(cuts, right))
        if not changed:
            return


def _split_points(node: ir.Node, total: int, rank: int) -> list[int]:
    axis = node.attributes.get("axis")
    axis = 0 if axis is None else axis.value
    if axis + (rank if axis < 0 else 0) != 1 or len(node.inputs) < 2 or node.inputs[1] is None:
        return []  # sizes from num_outputs cannot be rewritten to uneven chunks: the rule freezes it
    if node.inputs[1].const_value is None:
        return []
    sizes = [int(v) for v in node.inputs[1].const_value.numpy().reshape(-1)]
    if sum(sizes) != total:
        return []
    offsets, at = [], 0
    for size in sizes[:-1]:
        at += size
        offsets.append(at)
    return offsets


def _slice_points(node: ir.Node, total: int, rank: int) -> list[int]:
    values = [v.const_value.numpy().reshape(-1) if v is not None and v.const_value is not None else None
              for v in list(node.inputs[1:5]) + [None] * (5 - len(node.inputs))]
    starts, ends, axes, steps = values[0], values[1], values[2], values[3]
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
        return []
    axes = list(range(len(starts))) if axes is None else [int(a) + (rank if a < 0 else 0) for a in axes]
    if 1 not in axes:
        return []
    i = axes.index(1)
    if steps is not None and int(steps[i]) != 1 or int(starts[i]) < 0 or int(ends[i]) < 0:
        return []
    return [int(starts[i]), min(int(ends[i]), total)]


def analyze(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
            options: AnalysisOptions | None = None, *, hidden_size: bool | None = None) -> GroupAnalysis:
    """Compute channel groups, residual branches and MAC terms of ``model``.

    ``hidden_size=True`` (or ``options``) also makes a transformer's residual stream prunable
    through its LayerNormalizations, which is not exact (see :class:`AnalysisOptions`)."""
    from onnxprune.graph.macs import count_macs
    from onnxprune.graph.shapes import infer_static_shapes, resolve_input_shapes, static_shape_map

    options = options or AnalysisOptions()
    if hidden_size is not None:
        options = dataclasses.replace(options, hidden_size=hidden_size)
    input_shapes = resolve_input_shapes(model, input_shapes)
    skeleton, weight_shapes = skeleton_model(model)
    for node, name in zip(skeleton.graph.node, unique_node_names((n.name, n.op_type) for n in skeleton.graph.node)):
        node.name = name  # the names name_nodes gives the IR graph: MAC terms are keyed by them
    shapes = static_shape_map(infer_static_shapes(skeleton, {**input_shapes, **weight_shapes}))
    ir_model = ir.from_proto(model)
    graph = ir_model.graph
    name_nodes(graph)
    opset = graph.opset_imports.get("", 1)
    builder = _Builder(graph, shapes, opset, options)
    for node in graph:
        builder.visit(node)
    _freeze_subgraph_reads(builder, graph)
    branches = find_residual_branches(graph, builder)
    cost = count_macs(skeleton, {**input_shapes, **weight_shapes})
    analysis = _finish(builder, graph, branches, cost, input_shapes, options)
    analysis._ir = (model, ir_model)  # apply_plan on the same model reuses it (deserializing is slow)
    return analysis


def skeleton_model(model: onnx.ModelProto, limit: int = 4096) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """``model`` with its large weights turned into typed graph inputs (no data).

    Shape inference and MAC counting only need the weights' shapes; serializing hundreds of MB
    of weights for them is what made analysis slow on VGG-sized models. Small initializers
    (shape constants, split sizes) keep their values for data propagation.
    """
    skeleton = onnx.ModelProto()
    graph = model.graph
    skeleton.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                                      producer_name=model.producer_name, functions=model.functions))
    skeleton.graph.CopyFrom(onnx.GraphProto(name=graph.name, node=graph.node, input=graph.input,
                                            output=graph.output, value_info=graph.value_info))
    shapes = {}
    for init in graph.initializer:
        size = math.prod(init.dims)
        if size <= limit or init.data_type not in _FLOAT_TYPES:
            skeleton.graph.initializer.append(init)
        else:
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            shapes[init.name] = tuple(init.dims)
    return skeleton, shapes


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _freeze_subgraph_reads(builder: _Builder, graph: ir.Graph) -> None:
    """Values read inside If/Loop bodies are not node inputs: freeze them (no rule sees the read)."""
    for node in graph:
        for attribute in node.attributes.values():
            if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                subgraphs = attribute.value if isinstance(attribute.value, list) else [attribute.value]
                for sub in subgraphs:
                    for inner in ir.traversal.RecursiveGraphIterator(sub):
                        for value in inner.inputs:
                            if value is not None and value.name in builder.layouts:
                                builder.freeze(f"{value.name!r} is read inside a subgraph of {node.name!r}",
                                               builder.layouts[value.name])


def _flatten(trees: list[GateTree]) -> tuple[TensorAxis, ...]:
    seen: set[int] = set()
    return tuple(dict.fromkeys(t for tree in trees for t in tree.flatten(seen)))


def _finish(builder: _Builder, graph: ir.Graph, branches, cost, input_shapes, options) -> GroupAnalysis:
    roots = sorted({builder.root(s.id) for s in builder.spaces})
    ids = {root: builder.spaces[root].name for root in roots}
    gid = {str(s): ids[builder.root(s)] for s in range(len(builder.spaces))}
    # group ids are weight names, branch ids Add node names: a node may share a tensor's name,
    # so a branch id that is also a group id gets a fresh one (methods key both in one dict)
    fresh = OnnxNames((*ids.values(), *(b.id for b in branches)))
    branches = [b if b.id not in ids.values() else dataclasses.replace(b, id=fresh.fresh(f"{b.id}_branch"))
                for b in branches]
    node_branch = {}
    for branch in branches:
        for name in branch.nodes:
            node_branch.setdefault(name, branch.id)
    shared = {name for name, value in graph.initializers.items() if len(value.uses()) > 1}
    _freeze_conflicting_edits(builder)
    groups = []
    for root in roots:
        space = builder.spaces[root]
        for ta in (*space.slices, *space.consumers):
            if ta.name in shared and not any("shared" in r for r in space.reasons):
                space.reasons.append(f"initializer {ta.name!r} is shared by several nodes")
        owners = {node_branch.get(n) for n in space.nodes}
        inside = next(iter(owners)) if len(owners) == 1 and None not in owners else None
        groups.append(ChannelGroup(
            id=ids[root], size=space.size, producers=tuple(dict.fromkeys(space.slices)),
            consumers=tuple(dict.fromkeys(space.consumers)), gate_tensors=_flatten(space.gates),
            activations=tuple(dict.fromkeys(space.activations)), prunable=not space.reasons,
            reason="; ".join(space.reasons[:3]), dead_tests=tuple(dict.fromkeys(space.dead_tests)),
            folds=tuple(space.folds), nodes=tuple(dict.fromkeys(space.nodes)), branch=inside, chunks=space.chunks,
            approximate="; ".join(space.approximate[:2]),
        ))

    def remap(pieces: Iterable[Piece]) -> tuple[Piece, ...]:
        return tuple(dataclasses.replace(p, group=gid[p.group]) for p in pieces)

    terms = []
    for layer in cost.layers:  # one per MAC-bearing node, named as in the IR graph (see analyze)
        terms.append(MacTerm(layer.node, layer.macs, remap(builder.mac_in.get(layer.node, ())),
                             remap(builder.mac_out.get(layer.node, ())), layer.node in builder.depthwise))
    edits = [dataclasses.replace(e, pieces=remap(e.pieces)) for e in builder.edits]
    macs_by_node = {t.node: t.macs for t in terms}
    branches = [dataclasses.replace(b, macs=sum(macs_by_node.get(n, 0) for n in b.nodes), channels=remap(b.channels))
                for b in branches]
    log.info("analysis: %d groups (%d prunable), %d residual branches", len(groups),
             sum(g.prunable for g in groups), len(branches))
    pads = [dataclasses.replace(p, pieces=remap(p.pieces)) for p in builder.norm_pads]
    return GroupAnalysis(groups, branches, terms, edits, dict(input_shapes), options, pads)


def _freeze_conflicting_edits(builder: _Builder) -> None:
    """One integer counted by two different sets of channels (a computed Reshape target shared by
    two groups' reshapes) cannot follow both: freeze them."""
    seen: dict[tuple[str, int, int, str], tuple[Piece, ...]] = {}
    for edit in builder.edits:
        key = (edit.node, edit.input_index, edit.entry, edit.attribute)
        pieces = tuple(dataclasses.replace(p, group=str(builder.root(int(p.group)))) for p in edit.pieces)
        if seen.setdefault(key, pieces) != pieces:
            for piece in (*seen[key], *pieces):
                space = builder.space(int(piece.group))
                reason = f"an integer of node {edit.node!r} counts the channels of two groups"
                if reason not in space.reasons:
                    space.reasons.append(reason)


__all__ = ["GroupAnalysis", "analyze", "ChannelGroup", "ResidualBranch", "TensorAxis", "MacTerm"]
