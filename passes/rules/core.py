"""The op-rule registry and the context a rule works with.

A rule says, for one op type, how channels flow through a node: which output carries which
input's channels (``set_layout``), which weights create channels (``produce``) or read them
(``consume``), which per-channel parameters follow them (``follow``), where two activations
tie their channels together (``merge``), and which integers count them (``int_edit``). An op
without a rule, or a rule that cannot prove a rewrite exact, freezes the channels it touches
with a reason. Rules are keyed by (domain, op type, since-version) like ONNX's own schemas.

A value's channels are described by a :class:`Layout`: the axis, the elements per channel
(``block``) and a list of segments, each a run of channels of one *space* (a set of channels
created by one producer; spaces tied together by ``merge`` become one group).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import onnx_ir as ir

from onnxprune.passes.structures import FoldSite, IntEdit, Piece, State, TensorAxis

Rule = Callable[[ir.Node, "RuleContext"], None]
_RULES: dict[tuple[str, str], dict[int, Rule]] = {}


class RuleRegistryError(KeyError):
    """A rule key registered twice or looked up without an entry."""


def register(op_type: str, since: int, domain: str = "") -> Callable[[Rule], Rule]:
    """Decorator: register ``rule`` for ``op_type`` from opset ``since`` on; twice is an error."""

    def decorate(rule: Rule) -> Rule:
        versions = _RULES.setdefault((domain, op_type), {})
        if since in versions:
            raise RuleRegistryError(f"rule for {domain or 'ai.onnx'}::{op_type} since {since} already registered")
        versions[since] = rule
        return rule

    return decorate


def lookup(op_type: str, opset: int, domain: str = "") -> Rule | None:
    """The rule with the highest since-version <= ``opset``, or None (the op is unknown)."""
    versions = _RULES.get(("" if domain == "ai.onnx" else domain, op_type), {})
    eligible = [since for since in versions if since <= opset]
    return versions[max(eligible)] if eligible else None


def registered() -> list[tuple[str, str, int]]:
    return sorted((d, op, since) for (d, op), versions in _RULES.items() for since in versions)


@dataclasses.dataclass(frozen=True, eq=False)
class GateTree:
    """Gate tensors as a shared tree: joining two values' gates (a residual Add) costs O(1),
    where copying lists would make a chain of n blocks cost O(n^2)."""

    own: tuple[TensorAxis, ...] = ()
    parts: tuple["GateTree", ...] = ()

    def __add__(self, other: "GateTree") -> "GateTree":
        return GateTree((), (self, other))

    def flatten(self, seen: set[int] | None = None) -> list[TensorAxis]:
        """The tensors in this tree not yet in ``seen`` (shared subtrees are walked once)."""
        seen = set() if seen is None else seen
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            out.extend(node.own)
            stack.extend(node.parts)
        return out


@dataclasses.dataclass(frozen=True)
class Segment:
    space: int
    size: int
    gate: State = State.ZERO
    gates: GateTree = GateTree()  # zeroing these makes this run of channels ZERO here


@dataclasses.dataclass(frozen=True)
class Layout:
    axis: int  # non-negative, in the value's rank
    rank: int
    block: int
    segments: tuple[Segment, ...]

    @property
    def channels(self) -> int:
        return sum(s.size for s in self.segments)

    def offsets(self) -> list[int]:
        out, offset = [], 0
        for s in self.segments:
            out.append(offset)
            offset += s.size
        return out

    def with_state(self, gate: Callable[[State], State]) -> "Layout":
        segs = tuple(dataclasses.replace(s, gate=gate(s.gate)) for s in self.segments)
        return dataclasses.replace(self, segments=segs)

    def reset(self, gates: list[tuple[TensorAxis, ...]]) -> "Layout":
        """After a per-channel affine stage whose parameters ``gates`` (one tuple per segment)
        zero the channel whatever came in (BatchNormalization's scale and shift, say)."""
        segs = tuple(dataclasses.replace(s, gate=State.ZERO, gates=GateTree(tuple(g))) for s, g in zip(self.segments, gates))
        return dataclasses.replace(self, segments=segs)

    def add_gates(self, gates: list[TensorAxis]) -> "Layout":
        """A per-channel constant added here joins the gates (one per segment)."""
        segs = tuple(dataclasses.replace(s, gates=GateTree((g,), (s.gates,))) for s, g in zip(self.segments, gates))
        return dataclasses.replace(self, segments=segs)

    def moved(self, axis: int, rank: int, block: int | None = None) -> "Layout":
        return dataclasses.replace(self, axis=axis, rank=rank, block=self.block if block is None else block)

    def sub(self, start: int, stop: int) -> "Layout | None":
        """Channels ``start:stop`` when they fall on segment boundaries, else None."""
        segs, offset = [], 0
        for s in self.segments:
            if offset >= start and offset + s.size <= stop:
                segs.append(s)
            elif offset < stop and offset + s.size > start:
                return None
            offset += s.size
        return dataclasses.replace(self, segments=tuple(segs)) if segs else None


def nonzero(state: State) -> State:
    """After an op that maps 0 to a nonzero constant (Sigmoid, Add of a scalar)."""
    return max(state, State.UNIFORM)


def padded(state: State) -> State:
    """After zero padding: a nonzero constant channel is no longer the same everywhere."""
    return State.VARYING if state == State.UNIFORM else state


class RuleContext:
    """What a rule may read and record; implemented by the analysis builder."""

    node: ir.Node
    opset: int

    # reading ---------------------------------------------------------------------------
    def layout(self, value: ir.Value | None) -> Layout | None: ...
    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None: ...
    def const(self, value: ir.Value | None) -> np.ndarray | None: ...
    def is_param(self, value: ir.Value | None) -> bool: ...
    def attr(self, name: str, default=None): ...

    # recording -------------------------------------------------------------------------
    def set_layout(self, value: ir.Value, layout: Layout | None) -> None: ...
    def produce(self, value: ir.Value, axis: int, weight: TensorAxis,
                bias: TensorAxis | None) -> Layout | None: ...
    def consume(self, layout: Layout, weight: str, axis: int, out_axis: int, foldable: bool,
                value: ir.Value) -> None: ...
    def follow(self, layout: Layout, name: str, axis: int) -> list[TensorAxis]: ...
    def merge(self, a: Layout, b: Layout, multiply: bool, gate: bool = True) -> Layout | None: ...
    def int_edit(self, layout: Layout, start: int, stop: int, block: int, input_index: int,
                 entry: int, attribute: str = "", node: str | None = None) -> None: ...
    def scales(self, layout: Layout) -> None: ...
    def option(self, name: str): ...
    def pad_norm(self, layout: Layout) -> None: ...
    def approximate(self, reason: str, layout: Layout) -> None: ...
    def tie(self, layout: Layout) -> None: ...
    def chunked(self, layout: Layout, chunks: int) -> None: ...
    def freeze(self, reason: str, *layouts: Layout | None) -> None: ...


def pass_through(node: ir.Node, ctx: RuleContext, state: Callable[[State], State] | None = None) -> None:
    """Output 0 carries input 0's channels on the same axis (per-channel ops)."""
    layout = ctx.layout(node.inputs[0])
    if layout is not None and state is not None:
        layout = layout.with_state(state)
    ctx.set_layout(node.outputs[0], layout)


def axis_of(layout: Layout, axis: int) -> int:
    return axis + layout.rank if axis < 0 else axis


__all__ = [
    "FoldSite", "GateTree", "IntEdit", "Layout", "Piece", "Rule", "RuleContext", "RuleRegistryError",
    "Segment", "State", "TensorAxis", "axis_of", "pass_through", "lookup", "nonzero", "padded", "register", "registered",
]
