"""Cleanup: delete unused nodes and initializers, re-infer shapes, and run the full checker.

Rewrites leave intermediate shapes stale, so every value_info is dropped and recomputed by
ONNX shape inference; ``onnx.checker.check_model(full_check=True)`` must then pass, else the
rewrite is a bug and a VerificationError names the failure.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir  # noqa: F401  (type of `model`)
import onnx_ir.passes.common as common

from onnxprune.errors import VerificationError
from onnxprune.passes.groups import skeleton_model


def cleanup(model: ir.Model) -> onnx.ModelProto:
    """Remove dead structure from ``model`` (in place) and return the checked ModelProto."""
    common.RemoveUnusedNodesPass()(model)
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph:
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None  # stale after slicing; recomputed below
    proto = ir.to_proto(model)
    proto.graph.ClearField("value_info")
    try:
        skeleton, _ = skeleton_model(proto)  # shapes need no weight data; serializing it is slow
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=True)
        proto.graph.value_info.extend(inferred.graph.value_info)
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"rewritten model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    return proto
