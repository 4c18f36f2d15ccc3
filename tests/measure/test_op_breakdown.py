"""benchmarks/real/op_breakdown.py: onnxruntime's profiled kernel times land in the right kinds.

onnxruntime renames the nodes it rewrites (a Conv fused with its Relu, then moved to the NCHWc
layout, is profiled as ``<Relu's output>_nchwc``); a kind lost in that renaming would put the
depthwise convs' time under a generic "Conv" and hide what the breakdown is for.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "real"))

import op_breakdown  # noqa: E402


def separable_block(path: Path, channels: int = 16) -> None:
    """Conv 1x1 (dense) - Relu - depthwise Conv 3x3 - Relu - GAP - Flatten, input [N, 16, 32, 32]."""
    rng = np.random.default_rng(0)
    weights = {"dense_w": rng.standard_normal((channels, 16, 1, 1)), "dw_w": rng.standard_normal((channels, 1, 3, 3))}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "dense_w"], ["a"], name="dense"),
            helper.make_node("Relu", ["a"], ["ar"], name="dense_relu"),
            helper.make_node("Conv", ["ar", "dw_w"], ["b"], name="dw", group=channels, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["b"], ["br"], name="dw_relu"),
            helper.make_node("GlobalAveragePool", ["br"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
        ],
        "block",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16, 32, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", channels])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_fused_and_relaid_convs_keep_their_kind(tmp_path):
    path = tmp_path / "block.onnx"
    separable_block(path)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 16, 32, 32)).astype(np.float32)}
    times = op_breakdown.profiled_kernel_times(str(path), feeds, threads=1, runs=3)
    assert times["Conv, dense"] > 0 and times["Conv, depthwise"] > 0
    assert "Conv" not in times  # no conv time left unclassified


def test_macs_split_by_kind(tmp_path):
    path = tmp_path / "block.onnx"
    separable_block(path)
    macs = op_breakdown.macs_by_kind(onnx.load(path), batch=2)
    pixels = 2 * 32 * 32
    assert macs == {"Conv, dense": pixels * 16 * 16, "Conv, depthwise": pixels * 16 * 9}
