"""Dead-structure elimination: remove channels whose producing weights are all zero.

If every producer of channel c in a group has an all-zero weight slice for c, the channel no
longer depends on the input: it is a constant (a bias, through BatchNormalization and the
activation). Such a channel is removed when, at every consumer, it is 0, or the same
constant at every position and the consumer can take it into its bias (see
:mod:`onnxprune.passes.prune_channels`). The constants are read with onnxruntime on two random
inputs; a channel that differs between positions or inputs stays. At least one channel of a
group is always kept. This is how an unstructured method's dead filters become physical savings.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxprune.graph.macs import PRUNABLE_OPS
from onnxprune.passes.cleanup import CleanupPass
from onnxprune.passes.probe import probe_values
from onnxprune.passes.prune_channels import PruneChannelsPass
from onnxprune.passes.structures import FoldSite

log = logging.getLogger(__name__)


def dead_channels(model: onnx.ModelProto, analysis) -> dict[str, list[int]]:
    """Per prunable group, the channels whose producer weights are all zero."""
    arrays = {init.name: init for init in model.graph.initializer}
    found = {}
    for group in analysis.prunable_groups:
        if not group.dead_tests or group.branch is not None and group.size == 0:
            continue
        dead = np.ones(group.size, dtype=bool)
        for test in group.dead_tests:
            array = onnx.numpy_helper.to_array(arrays[test.name])
            moved = np.moveaxis(array, test.axis, 0)[test.start:test.stop]
            dead &= ~np.any(moved.reshape(group.size, -1) != 0, axis=1)
        if dead.any():
            found[group.id] = np.flatnonzero(dead).tolist()
    return found


def removable(analysis, dead: dict[str, list[int]], values: list[dict[str, np.ndarray]]) -> dict[str, list[int]]:
    """The dead channels that are constant wherever they are read, and 0 where a bias cannot take them."""
    out = {}
    for group_id, channels in dead.items():
        group = analysis.group(group_id)
        keep = [c for c in channels if all(_removable_at(site, c, values) for site in group.folds)]
        if group.chunks > 1:  # a grouped Conv's output loses equally many channels per conv group
            runs = [[c for c in keep if group.chunk_of(c) == j] for j in range(group.chunks)]
            least = min(len(r) for r in runs)
            keep = sorted(c for r in runs for c in r[:least])
        if len(keep) == group.size:  # a layer needs at least one channel (per conv group)
            run = group.size // group.chunks
            keep = [c for c in keep if c % run]
        if keep:
            out[group_id] = keep
    return out


def _removable_at(site: FoldSite, channel: int, values: list[dict[str, np.ndarray]]) -> bool:
    rows = site.weight.element_indices([channel])
    seen = [np.take(v[site.value], rows, axis=site.value_axis) for v in values]
    first = seen[0].reshape(-1)[0]
    constant = all(np.all(s == first) for s in seen)  # the same number everywhere, for every input
    if constant and first == 0:
        return True
    return constant and site.foldable


def dead_structure_plan(model: onnx.ModelProto, analysis) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray]]:
    """Kept channels per group after removing dead ones, and the values to fold their constants."""
    dead = dead_channels(model, analysis)
    if not dead:
        return {}, {}
    names = sorted({site.value for g in dead for site in analysis.group(g).folds})
    values = probe_values(model, names, analysis.input_shapes)
    gone = removable(analysis, dead, values)
    kept = {g: tuple(c for c in range(analysis.group(g).size) if c not in set(gone[g])) for g in gone}
    log.info("dead structure: %d channels in %d groups", sum(map(len, gone.values())), len(gone))
    return kept, values[0]


class DeadStructurePass(ir.passes.InPlacePass):
    """Find dead channels (weights all zero) and remove those that can go exactly; then clean up."""

    def __init__(self, input_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        self.input_shapes = input_shapes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxprune.passes.groups import analyze

        if not _has_zero_slice(model):
            return ir.passes.PassResult(model, modified=False)  # nothing can be dead: skip the analysis
        proto = ir.to_proto(model)
        analysis = analyze(proto, self.input_shapes)
        kept, values = dead_structure_plan(proto, analysis)
        if not kept:
            return ir.passes.PassResult(model, modified=False)
        PruneChannelsPass(analysis, kept, values, fold_all=True)(model)
        CleanupPass()(model)
        return ir.passes.PassResult(model, modified=True)


def _has_zero_slice(model: ir.Model) -> bool:
    """Does a layer weight have an all-zero slice on its first two axes (a candidate dead channel)?"""
    for node in model.graph:
        if node.op_type not in PRUNABLE_OPS or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None:
            continue
        nonzero = weight.const_value.numpy() != 0
        for axis in range(min(2, nonzero.ndim)):  # Gemm/MatMul/ConvTranspose keep outputs on axis 1
            if not np.all(np.any(np.moveaxis(nonzero, axis, 0).reshape(nonzero.shape[axis], -1), axis=1)):
                return True
    return False
