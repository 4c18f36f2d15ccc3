"""Slice bounds computed from static dims fold to constants (normalize step 6, issue 14 item 3).

Ultralytics' C2f ``cv1(x).chunk(2, 1)``, exported by TorchScript with a dynamic batch, slices
cv1's output at bounds computed from ``Shape(h)[1]``. Before folding, the Slice freezes both
chunks and the bottlenecks on them; after it, each chunk is a group of its own, and a random
plan through the passes equals the masked reference.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnx
import pytest

from onnxprune.graph.sessions import make_session
from onnxprune.importing.normalize import normalize
from onnxprune.passes import analyze
from onnxprune.passes.testing import check_exact, model_from_text, random_plan


def _silu(name: str, x: str, w: str, k: str, pads: bool = True) -> str:
    attrs = " <pads=[1,1,1,1]>" if pads else ""
    return f"{name}_c = Conv{attrs} ({x}, {w}, {k})\n  {name}_s = Sigmoid ({name}_c)\n  {name} = Mul ({name}_c, {name}_s)"


# The node pattern of the TorchScript export of ultralytics' C2f (one bottleneck with shortcut).
C2F_CHUNK = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,4,8,8] y)
<float[8,3,3,3] w0, float[8] k0, float[8,8,1,1] wc1, float[8] kc1, float[4,4,3,3] wma, float[4] kma,
 float[4,4,3,3] wmb, float[4] kmb, float[8,12,1,1] wc2, float[8] kc2, float[4,8,1,1] wy, float[4] ky,
 int64 one = {{1}}, int64 two = {{2}}, int64[1] zero1 = {{0}}, int64[1] axis1 = {{1}}>
{{
  {_silu("s0", "x", "w0", "k0")}
  {_silu("a", "s0", "wc1", "kc1", pads=False)}
  shape = Shape (a)
  c = Gather <axis=0> (shape, one)
  c1 = Add (c, one)
  half = Div (c1, two)
  end0 = Mul (half, one)
  end1 = Mul (half, two)
  end0u = Unsqueeze (end0, zero1)
  end1u = Unsqueeze (end1, zero1)
  a0 = Slice (a, zero1, end0u, axis1)
  a1 = Slice (a, end0u, end1u, axis1)
  {_silu("ma", "a1", "wma", "kma")}
  {_silu("mb", "ma", "wmb", "kmb")}
  b = Add (a1, mb)
  cat = Concat <axis=1> (a0, a1, b)
  {_silu("e", "cat", "wc2", "kc2", pads=False)}
  y = Conv (e, wy, ky)
}}"""

SHAPES = {"x": (2, 3, 8, 8)}


def test_unfolded_bounds_freeze_the_c2f_split() -> None:
    groups = {g.id: g for g in analyze(model_from_text(C2F_CHUNK), SHAPES).groups}
    assert not groups["wc1"].prunable and "computed bounds" in groups["wc1"].reason


def test_folded_bounds_make_each_chunk_a_group_and_plans_exact() -> None:
    model = normalize(model_from_text(C2F_CHUNK))
    assert not any(n.op_type in ("Shape", "Gather", "Div") for n in model.graph.node)  # the arithmetic went
    analysis = analyze(model, SHAPES)
    groups = {g.id: g for g in analysis.groups}
    assert groups["wc1[0:4]"].prunable and groups["wc1[4:8]"].prunable, [(g.id, g.reason) for g in analysis.groups]
    for seed in (0, 1):
        checked = check_exact(model, random_plan(analysis, seed=seed, fraction=0.5), analysis=analysis, seed=seed)
        assert checked.macs == checked.predicted_macs


@pytest.mark.parametrize("batch", [1, 3])
def test_folding_keeps_the_function_at_any_batch(batch) -> None:
    original = model_from_text(C2F_CHUNK)
    folded = normalize(original)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    (expected,), (actual,) = make_session(original).run(None, {"x": x}), make_session(folded).run(None, {"x": x})
    np.testing.assert_array_equal(actual, expected)


def test_bounds_from_a_dynamic_dim_stay_computed() -> None:
    """Bounds that read the batch (dynamic) must not fold, even where they come out the same:
    here 0 * Shape(a)[0] + 4 and twice that."""
    text = C2F_CHUNK.replace("c = Gather <axis=0> (shape, one)", "c = Gather <axis=0> (shape, zero)").replace(
        "c1 = Add (c, one)\n  half = Div (c1, two)", "c0 = Mul (c, zero)\n  half = Add (c0, four)").replace(
        "int64 one = {1},", "int64 one = {1}, int64 zero = {0}, int64 four = {4},")
    assert "four)" in text
    model = normalize(model_from_text(text))
    assert any(n.op_type == "Shape" for n in model.graph.node)
    groups = {g.id: g for g in analyze(model, SHAPES).groups}
    assert not groups["wc1"].prunable


SPLIT_NUM_OUTPUTS = f"""<ir_version: 9, opset_import: ["" : 18]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w0, float[8] k0, float[3,3,3,3] wm, float[3] km, float[4,8,1,1] wy, float[4] ky>
{{
  {_silu("s0", "x", "w0", "k0")}
  a0, a1, a2 = Split <axis=1, num_outputs=3> (s0)
  {_silu("m", "a1", "wm", "km")}
  cat = Concat <axis=1> (a0, m, a2)
  y = Conv (cat, wy, ky)
}}"""


def test_split_num_outputs_on_a_static_axis_becomes_sizes() -> None:
    """The dynamo exporter's chunk: 8 channels in 3 outputs are 3, 3 and 2 (the spec's ceil)."""
    original = model_from_text(SPLIT_NUM_OUTPUTS)
    frozen = {g.id: g for g in analyze(original).groups}
    assert not frozen["w0"].prunable and "no constant split sizes" in frozen["w0"].reason
    model = normalize(original)
    (split,) = [n for n in model.graph.node if n.op_type == "Split"]
    sizes = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}[split.input[1]]
    assert sizes == [3, 3, 2] and not any(a.name == "num_outputs" for a in split.attribute)
    analysis = analyze(model)
    assert {"w0[0:3]", "w0[3:6]", "w0[6:8]"} <= {g.id for g in analysis.prunable_groups}
    checked = check_exact(model, random_plan(analysis, seed=0, fraction=0.5), analysis=analysis)
    assert checked.macs == checked.predicted_macs


def _yolov8n_onnx(size: int, dynamo: bool = False) -> onnx.ModelProto:
    """YOLOv8n from ultralytics' architecture file (random weights, nothing downloaded), BatchNorm
    fused and exported the way ultralytics' own ONNX export does: TorchScript, dynamic batch."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch

    tasks = pytest.importorskip("ultralytics.nn.tasks")
    from ultralytics.nn.modules import Detect

    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval().fuse(verbose=False)
    for module in model.modules():
        if isinstance(module, Detect):
            module.export, module.format = True, "onnx"
    if dynamo:  # torch.onnx.export's defaults: dynamo, fixed batch 1; chunk becomes Split num_outputs
        return torch.onnx.export(model, (torch.randn(1, 3, size, size),), verbose=False).model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), buffer, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-dynamic-batch", "export-defaults"])
def test_ultralytics_yolov8n_backbone_and_neck_are_prunable(dynamo) -> None:
    pytest.importorskip("ultralytics")
    model = normalize(_yolov8n_onnx(64, dynamo))
    shapes = {model.graph.input[0].name: (1, 3, 64, 64)}
    analysis = analyze(model, shapes)
    frozen = {g.id: g.reason for g in analysis.groups if not g.prunable}
    # only the detect head's output convs stay: their channels are the box bins and the classes
    assert sorted(frozen) == ["model.22.cv2.0.2.weight", "model.22.cv3.0.2.weight", "model.22.dfl.conv.weight"], frozen
    assert {"model.2.cv1.conv.weight[0:16]", "model.8.cv1.conv.weight[128:256]"} <= {g.id for g in analysis.prunable_groups}
    checked = check_exact(model, random_plan(analysis, seed=0, fraction=0.5), analysis=analysis)
    assert checked.macs == checked.predicted_macs
