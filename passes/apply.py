"""``apply_plan``: run the passes in order on a copy of the model and verify the result.

    1. PruneChannelsPass       plan.kept; constants a removed channel leaves come from the masked reference
       PadNormsPass            LayerNormalizations over a pruned hidden size padded to their full width
    2. RemoveBranchesPass      plan.dropped_branches; branches of emptied groups become constants
    3. CleanupPass             unused nodes and weights
    4. DeadStructurePass       all-zero channels (constants folded), then cleanup again
    5. checked_proto           shape inference and the full ONNX checker

The model passed in is never modified.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxprune.passes.analysis import name_nodes
from onnxprune.passes.cleanup import CleanupPass, checked_proto
from onnxprune.passes.dead_structure import DeadStructurePass
from onnxprune.passes.groups import GroupAnalysis, analyze
from onnxprune.passes.masking import masked_reference
from onnxprune.passes.pad_norms import PadNormsPass
from onnxprune.passes.plan import PlanError, PruningPlan
from onnxprune.passes.probe import probe_values
from onnxprune.passes.prune_channels import PruneChannelsPass
from onnxprune.passes.remove_branches import RemoveBranchesPass
from onnxprune.passes.structures import State

log = logging.getLogger(__name__)


def apply_plan(model: onnx.ModelProto, plan: PruningPlan, input_shapes: dict[str, tuple[int, ...]] | None = None,
               *, dead_structure: bool = True, analysis: GroupAnalysis | None = None) -> onnx.ModelProto:
    """The physically pruned model: equal to ``masked_reference(model, plan)`` on onnxruntime
    (a plan that prunes a transformer's hidden size opts in with ``meta["hidden_size"]``, see
    AnalysisOptions)."""
    analysis = analysis or analyze(model, input_shapes, hidden_size=bool(plan.meta.get("hidden_size", False)))
    analysis.validate(plan)
    kept = {g: k for g, k in plan.kept.items() if len(k) < analysis.group(g).size}
    emptied = {analysis.group(g).branch for g, k in kept.items() if not k} - set(plan.dropped_branches)
    needed = [site.value for g, k in kept.items() if k for site in analysis.group(g).folds if site.gate != State.ZERO]
    needed += [analysis.branch(b).branch_output for b in emptied]
    values = probe_values(masked_reference(model, plan, analysis), needed, analysis.input_shapes) if needed else [{}]
    removed = {g: sorted(set(range(analysis.group(g).size)) - set(k)) for g, k in kept.items() if k}
    passes = [
        PruneChannelsPass(analysis, kept, values[0]),
        PadNormsPass(analysis, removed),
        RemoveBranchesPass(analysis, plan.dropped_branches,
                           {b: _branch_constant(analysis, b, kept, values) for b in emptied}),
        CleanupPass(),
    ]
    if dead_structure:
        passes.append(DeadStructurePass(analysis.input_shapes))
    graph_model = analysis.ir_model(model)
    ir.passes.Sequential(*passes)(graph_model)
    return checked_proto(graph_model)


def eliminate_dead_structure(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """Remove channels whose weights are all zero (exactly: constants folded); ``model`` if none."""
    graph_model = ir.from_proto(model)
    name_nodes(graph_model.graph)
    if not DeadStructurePass(input_shapes)(graph_model).modified:
        return model
    return checked_proto(graph_model)


def _branch_constant(analysis: GroupAnalysis, branch_id: str, kept, values) -> np.ndarray:
    """The branch output of the masked model as [1, C, 1, ...], if it is one constant per channel."""
    branch = analysis.branch(branch_id)
    first = values[0][branch.branch_output]
    axis = branch.channel_axis
    index = tuple(slice(None) if i == axis else slice(0, 1) for i in range(first.ndim))
    constant = first[index]
    if not all(np.array_equal(np.broadcast_to(constant, v[branch.branch_output].shape), v[branch.branch_output])
               for v in values):
        raise PlanError(f"branch {branch_id!r}: emptying its group leaves an output that is not constant")
    offsets = np.cumsum([0] + [p.stop - p.start for p in branch.channels])
    rows = []
    for piece, offset in zip(branch.channels, offsets):
        keep = kept.get(piece.group, range(piece.stop - piece.start))  # the stream's own pruning
        rows += [offset + c for c in keep]
    return np.take(constant, rows, axis=axis)
