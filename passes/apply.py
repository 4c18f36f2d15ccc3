"""``apply_plan``: run the passes in order on a copy of the model and verify the result.

    1. prune channels and units        (plan.kept; constants from the masked reference)
    2. remove residual branches        (plan.dropped_branches; emptied groups' branches -> constants)
    3. cleanup                         (unused nodes and weights, shapes, checker)
    4. dead-structure elimination      (all-zero channels, then cleanup again)

The model passed in is never modified.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from onnxprune.passes.cleanup import cleanup
from onnxprune.passes.dead_structure import dead_structure_plan
from onnxprune.passes.groups import GroupAnalysis, analyze
from onnxprune.passes.masking import masked_reference
from onnxprune.passes.plan import PlanError, PruningPlan
from onnxprune.passes.probe import probe_values
from onnxprune.passes.prune_channels import PruneChannelsPass
from onnxprune.passes.remove_branches import RemoveBranchesPass
from onnxprune.passes.structures import State

log = logging.getLogger(__name__)


def apply_plan(model: onnx.ModelProto, plan: PruningPlan, input_shapes: dict[str, tuple[int, ...]] | None = None,
               *, dead_structure: bool = True, analysis: GroupAnalysis | None = None) -> onnx.ModelProto:
    """The physically pruned model: equal to ``masked_reference(model, plan)`` on onnxruntime."""
    analysis = analysis or analyze(model, input_shapes)
    analysis.validate(plan)
    kept = {g: k for g, k in plan.kept.items() if len(k) < analysis.group(g).size}
    emptied = {analysis.group(g).branch for g, k in kept.items() if not k} - set(plan.dropped_branches)
    constants: dict[str, np.ndarray] = {}
    values: list[dict[str, np.ndarray]] = []
    needed = [site.value for g, k in kept.items() if k for site in analysis.group(g).folds if site.gate != State.ZERO]
    needed += [analysis.branch(b).branch_output for b in emptied]
    if needed:
        values = probe_values(masked_reference(model, plan, analysis), needed, analysis.input_shapes)
        constants = values[0]
    branch_constants = {b: _branch_constant(analysis, b, kept, values) for b in emptied}
    graph_model = analysis.ir_model(model)
    PruneChannelsPass(analysis, kept, constants)(graph_model)
    RemoveBranchesPass(analysis, plan.dropped_branches, branch_constants)(graph_model)
    pruned = cleanup(graph_model)
    if dead_structure:
        pruned = eliminate_dead_structure(pruned, analysis.input_shapes)
    return pruned


def eliminate_dead_structure(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """Remove channels whose weights are all zero (exactly: constants folded); then clean up."""
    if not _has_zero_slice(model):
        return model  # nothing can be dead: skip the analysis
    analysis = analyze(model, input_shapes)
    kept, values = dead_structure_plan(model, analysis)
    if not kept:
        return model
    graph_model = analysis.ir_model(model)
    PruneChannelsPass(analysis, kept, values, fold_all=True)(graph_model)
    return cleanup(graph_model)


def _has_zero_slice(model: onnx.ModelProto) -> bool:
    """Does a layer weight have an all-zero output slice (a candidate dead channel)?"""
    weights = {node.input[1] for node in model.graph.node
               if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1}
    for init in model.graph.initializer:
        if init.name not in weights or len(init.dims) < 1:
            continue
        nonzero = onnx.numpy_helper.to_array(init) != 0
        for axis in range(min(2, nonzero.ndim)):  # Gemm/MatMul/ConvTranspose keep outputs on axis 1
            if not np.all(np.any(np.moveaxis(nonzero, axis, 0).reshape(nonzero.shape[axis], -1), axis=1)):
                return True
    return False


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
