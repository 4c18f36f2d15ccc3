"""--input-shape parsing, dynamic-dimension resolution, static shape inference."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.errors import ShapeError
from onnxprune.graph.shapes import infer_static_shapes, parse_input_shapes, resolve_input_shapes, static_shape_map
from tests.support.models import make_tiny_conv

DYNAMIC_HW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,H,W] x) => (float[N,3,H,W] y) { y = Relu (x) }
"""


def test_parse_input_shapes():
    assert parse_input_shapes(["image=1x3x224x224", "ids=2,16"]) == {"image": (1, 3, 224, 224), "ids": (2, 16)}
    for bad in ("image", "image=", "image=1xx3", "=1x2", "image=0x3"):
        with pytest.raises(ShapeError):
            parse_input_shapes([bad])


def test_dynamic_batch_becomes_one():
    assert resolve_input_shapes(make_tiny_conv()) == {"x": (1, 3, 8, 8)}


def test_other_dynamic_dims_need_the_option():
    model = onnx.parser.parse_model(DYNAMIC_HW)
    with pytest.raises(ShapeError, match=r"input 'x' has dynamic dimension 'H' at axis 2.*--input-shape x="):
        resolve_input_shapes(model)
    assert resolve_input_shapes(model, {"x": (2, 3, 5, 7)}) == {"x": (2, 3, 5, 7)}


def test_override_checked_against_model():
    model = make_tiny_conv()
    with pytest.raises(ShapeError, match="inputs are"):
        resolve_input_shapes(model, {"nope": (1,)})
    with pytest.raises(ShapeError, match="fixed at 3"):
        resolve_input_shapes(model, {"x": (1, 4, 8, 8)})
    with pytest.raises(ShapeError, match="4 dims given|2 dims given"):
        resolve_input_shapes(model, {"x": (1, 3)})


def test_infer_static_shapes_fills_every_value():
    shaped = infer_static_shapes(make_tiny_conv(), {"x": (2, 3, 8, 8)})
    shapes = static_shape_map(shaped)
    assert shapes["c1"] == (2, 6, 8, 8)
    assert shapes["f"] == (2, 6)
    assert shapes["y"] == (2, 4)


def test_onnxruntime_fallback_for_data_dependent_shapes():
    # NonZero's output length depends on the data: only a real run knows it.
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (int64[2,K] y) { y = NonZero (x) }
        """
    )
    shapes = static_shape_map(infer_static_shapes(model, {"x": (2, 3)}))
    assert shapes["y"] == (2, 0)  # zeros in, nothing nonzero
