"""GroupAnalysis: the result of :func:`onnxprune.passes.groups.analyze`, and what a plan does to it.

``validate(plan)`` refuses a plan that names an unknown group or branch, an index out of range,
a frozen group, or empties a group that is not inside a residual branch (one line each).
``predicted_macs(plan)`` is exact: every MAC term is ``macs * kept_in/C_in * kept_out/C_out``
with integer sizes, and the nodes of dropped (or emptied) branches count 0.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import onnx
import onnx_ir as ir

from onnxprune.graph.names import OnnxNames
from onnxprune.passes.plan import PlanError, PruningPlan
from onnxprune.passes.structures import ChannelGroup, IntEdit, MacTerm, PaddedNorm, Piece, ResidualBranch


def unique_node_names(nodes: Iterable[tuple[str, str]]) -> list[str]:
    """Stable, unique names for nodes given as (name, op type) in graph order.

    An unnamed node gets its op type and position (``Relu_7``), or the first free variant of it
    (``Relu_7_1``) when another node already has that name; a name seen before gets a suffix.
    The same rule names the IR graph (:func:`name_nodes`) and the protobuf skeleton the MAC
    counter reads, so MAC terms are matched to nodes by name.
    """
    nodes = list(nodes)
    names = OnnxNames(name for name, _ in nodes if name)
    seen: set[str] = set()
    out = []
    for index, (name, op_type) in enumerate(nodes):
        if not name:
            name = names.fresh(f"{op_type}_{index}")
        elif name in seen:
            name = names.fresh(name)
        seen.add(name)
        out.append(name)
    return out


def name_nodes(graph: ir.Graph) -> None:
    """Give unnamed (and repeated) nodes a stable, unique name (:func:`unique_node_names`)."""
    nodes = list(graph)
    for node, name in zip(nodes, unique_node_names((n.name, n.op_type) for n in nodes)):
        node.name = name


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """Structures the analysis may offer beyond the exact ones.

    ``hidden_size``: a transformer's residual stream (embeddings, every residual Add, every
    LayerNormalization's scale and bias, the output head) is one group. In the masked model a
    LayerNormalization still averages the removed channels, as zeros: mean S/D and variance
    Q/D - (S/D)^2 over the full width D. ``hidden_norm`` says how the pruned model matches it:

    ``"pad"``     exact: the kept channels are padded back to D with zeros before each
                  LayerNormalization (scale and bias padded too) and sliced after it
    ``"narrow"``  the LayerNormalization runs over the kept width D' (mean S/D', variance
                  over D'); not exact (about 5% relative output error per 1/16 of the width
                  removed, docs/transformers.md), the groups carry ``ChannelGroup.approximate``
    """

    hidden_size: bool = False
    hidden_norm: str = "pad"

    def __post_init__(self) -> None:
        if self.hidden_norm not in ("pad", "narrow"):
            raise ValueError(f"hidden_norm must be 'pad' or 'narrow', not {self.hidden_norm!r}")


@dataclasses.dataclass
class GroupAnalysis:
    """Groups, residual branches and MAC terms of one model (see the module docstring)."""

    groups: list[ChannelGroup]
    residual_branches: list[ResidualBranch]
    mac_terms: list[MacTerm]
    int_edits: list[IntEdit]
    input_shapes: dict[str, tuple[int, ...]]
    options: AnalysisOptions = dataclasses.field(default_factory=AnalysisOptions)
    padded_norms: list[PaddedNorm] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._groups = {g.id: g for g in self.groups}
        self._branches = {b.id: b for b in self.residual_branches}
        self._ir: tuple[onnx.ModelProto, ir.Model] | None = None

    def ir_model(self, model: onnx.ModelProto) -> ir.Model:
        """An onnx-ir copy of ``model`` (the one built during analysis, once, if it is the same model)."""
        if self._ir is not None and self._ir[0] is model:
            ir_model, self._ir = self._ir[1], None  # passes edit it: hand it out only once
            return ir_model
        ir_model = ir.from_proto(model)
        name_nodes(ir_model.graph)
        return ir_model

    def group(self, group_id: str) -> ChannelGroup:
        try:
            return self._groups[group_id]
        except KeyError:
            raise PlanError(f"plan names unknown channel group {group_id!r}") from None

    def branch(self, branch_id: str) -> ResidualBranch:
        try:
            return self._branches[branch_id]
        except KeyError:
            raise PlanError(f"plan names unknown residual branch {branch_id!r}") from None

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def total_macs(self) -> int:
        return sum(term.macs for term in self.mac_terms)

    def validate(self, plan: PruningPlan) -> None:
        """Raise PlanError (one line) unless ``plan`` can be applied exactly to this model."""
        for group_id, kept in plan.kept.items():
            group = self.group(group_id)
            if not group.prunable and len(kept) != group.size:
                raise PlanError(f"group {group_id!r} is frozen ({group.reason}); it cannot be pruned")
            bad = [i for i in kept if not 0 <= i < group.size]
            if bad:
                raise PlanError(f"group {group_id!r}: kept index {bad[0]} out of range 0..{group.size - 1}")
            if group.chunks > 1 and len({sum(group.chunk_of(i) == j for i in kept) for j in range(group.chunks)}) > 1:
                raise PlanError(f"group {group_id!r} feeds a grouped Conv with {group.chunks} groups: keep equally "
                                f"many channels in each run of {group.size // group.chunks}")
            if not kept and group.branch is None:
                raise PlanError(f"group {group_id!r} cannot be emptied: it is not inside a residual branch")
        for branch_id in plan.dropped_branches:
            self.branch(branch_id)

    def predicted_macs(self, plan: PruningPlan) -> int:
        """MACs of the model after ``apply_plan(plan)`` (exact: counts are products of sizes)."""
        self.validate(plan)
        sizes = {g.id: g.size for g in self.groups}
        kept = {g: len(v) for g, v in plan.kept.items()}
        gone = self._removed_nodes(plan)

        def fraction(pieces: tuple[Piece, ...]) -> tuple[int, int]:
            total = sum(p.block * (p.stop - p.start) for p in pieces)
            left = sum(p.block * kept.get(p.group, sizes[p.group]) for p in pieces)
            return left, total

        macs = 0
        for term in self.mac_terms:
            if term.node in gone:
                continue
            num, den = 1, 1
            sides = [term.outputs] if term.depthwise else [term.inputs, term.outputs]
            for pieces in sides:
                if pieces:
                    left, total = fraction(pieces)
                    num, den = num * left, den * total
            macs += term.macs * num // den
        return macs

    def _removed_nodes(self, plan: PruningPlan) -> set[str]:
        gone: set[str] = set()
        for branch_id in plan.dropped_branches:
            gone.update(self.branch(branch_id).nodes)
        for group_id, kept in plan.kept.items():
            group = self.group(group_id)
            if not kept and group.branch is not None:
                gone.update(self.branch(group.branch).nodes)  # the branch becomes a constant
        return gone

    def describe(self, plan: PruningPlan) -> list[str]:
        """One line per change the plan makes, for people (``inspect --plan``)."""
        self.validate(plan)
        lines = []
        for group_id, kept in plan.kept.items():
            group = self.group(group_id)
            if len(kept) < group.size:
                lines.append(f"group {group_id}: keep {len(kept)}/{group.size} channels "
                             f"({len(group.producers)} tensors and {len(group.consumers)} consumers sliced)")
        for branch_id in plan.dropped_branches:
            branch = self.branch(branch_id)
            lines.append(f"branch {branch_id}: removed ({len(branch.nodes)} nodes, {branch.macs} MACs)")
        before, after = self.total_macs, self.predicted_macs(plan)
        lines.append(f"MACs {before} -> {after} ({after / max(before, 1):.1%})")
        return lines
