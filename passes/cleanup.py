"""Cleanup: delete unused nodes and initializers; then a checked ModelProto.

Rewrites leave intermediate shapes stale, so :class:`CleanupPass` drops them along with the
nodes and weights nothing reads any more. :func:`checked_proto` recomputes every value_info by
ONNX shape inference and runs ``onnx.checker.check_model(full_check=True)``; a failure is a bug
in a rewrite and raises a VerificationError naming it.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxprune.errors import VerificationError
from onnxprune.passes.groups import skeleton_model


class CleanupPass(ir.passes.InPlacePass):
    """Remove unused nodes and initializers; forget intermediate shapes (re-inferred later)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = common.RemoveUnusedNodesPass()(model).modified
        outputs = {id(v) for v in model.graph.outputs}
        for node in model.graph:
            for value in node.outputs:
                if id(value) not in outputs:
                    value.shape = None  # stale after slicing
        return ir.passes.PassResult(model, modified=modified)


def _checkable(proto: onnx.ModelProto, skeleton: onnx.ModelProto) -> onnx.ModelProto:
    from onnxprune.graph.modelio import is_large_model

    if not is_large_model(proto):
        return proto
    skeleton.graph.ClearField("value_info")
    skeleton.graph.value_info.extend(proto.graph.value_info)
    return skeleton


def checked_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a ModelProto with inferred shapes that passes the full ONNX checker."""
    proto = ir.to_proto(model)
    proto.graph.ClearField("value_info")
    try:
        skeleton, _ = skeleton_model(proto)  # shapes need no weight data; serializing it is slow
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=True)
        proto.graph.value_info.extend(inferred.graph.value_info)
        # a large model is checked as its skeleton (large weights as typed inputs): the full check
        # serializes its argument (two more copies of the weights; impossible over 2 GiB), and the
        # weights written by the passes are numpy arrays of their stated shapes
        onnx.checker.check_model(_checkable(proto, skeleton), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"rewritten model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    return proto
