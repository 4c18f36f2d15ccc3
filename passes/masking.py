"""The masked reference: the model with the removed structures' gate tensors zeroed.

Zeroing a group's gate tensors for channel c (BatchNormalization's scale and shift, or the
producing layer's weight row and bias) makes channel c exactly zero, or a constant, where the
next layers read it; zeroing a branch's gate tensors makes ``Add(x, f(x)) = x``. Pruning is
exact when the physically smaller model computes what this masked model computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.passes.plan import PruningPlan
from onnxprune.passes.structures import TensorAxis


def masked_reference(model: onnx.ModelProto, plan: PruningPlan, analysis) -> onnx.ModelProto:
    """A copy of ``model`` with the gates of every removed channel and dropped branch zeroed."""
    analysis.validate(plan)
    zero: dict[str, list[tuple[int, np.ndarray]]] = {}
    for group_id, kept in plan.kept.items():
        group = analysis.group(group_id)
        removed = sorted(set(range(group.size)) - set(kept))
        if removed:
            for gate in group.gate_tensors:
                zero.setdefault(gate.name, []).append((gate.axis, gate.element_indices(removed)))
    for branch_id in plan.dropped_branches:
        for gate in analysis.branch(branch_id).gate_tensors:
            zero.setdefault(gate.name, []).append((gate.axis, _all(gate)))
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    for init in masked.graph.initializer:
        if init.name in zero:
            array = numpy_helper.to_array(init).copy()
            for axis, indices in zero[init.name]:
                index = [slice(None)] * array.ndim
                index[axis] = indices
                array[tuple(index)] = 0
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    return masked


def _all(gate: TensorAxis) -> np.ndarray:
    return np.arange(gate.start, gate.stop)
