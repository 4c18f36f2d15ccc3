"""MAC counting against published figures and hand-computed small cases."""

from __future__ import annotations

import io

import onnx
import pytest

from onnxprune.graph.macs import count_macs, format_count
from tests.support.models import make_tiny_conv


def test_tiny_conv_by_hand():
    cost = count_macs(make_tiny_conv(), {"x": (1, 3, 8, 8)})
    by_op = {layer.op_type: layer for layer in cost.layers}
    assert by_op["Conv"].macs == 6 * 8 * 8 * 3 * 3 * 3
    assert by_op["Gemm"].macs == 4 * 6
    assert by_op["Conv"].weight_shape == (6, 3, 3, 3)
    assert cost.total_params == 6 * 27 + 6 + 24 + 4
    assert cost.total_macs == 6 * 64 * 27 + 24


def test_matmul_batched_and_depthwise():
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,5,8] a, float[2,8,3] b, float[1,4,6,6] x, float[4,1,3,3] w) => (float[2,5,3] y, float[1,4,4,4] z) {
          y = MatMul (a, b)
          z = Conv <group = 4> (x, w)
        }
        """
    )
    cost = count_macs(model, {"a": (2, 5, 8), "b": (2, 8, 3), "x": (1, 4, 6, 6), "w": (4, 1, 3, 3)})
    by_op = {layer.op_type: layer.macs for layer in cost.layers}
    assert by_op["MatMul"] == 2 * 5 * 3 * 8
    assert by_op["Conv"] == 4 * 4 * 4 * 9


@pytest.mark.parametrize("name, gmacs", [("resnet18", 1.82), ("mobilenet_v2", 0.30)])
def test_published_torchvision_figures(name, gmacs):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    model = getattr(torchvision.models, name)(weights=None).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), buffer, dynamo=False, opset_version=17)
    cost = count_macs(onnx.load_from_string(buffer.getvalue()))
    assert cost.total_macs / 1e9 == pytest.approx(gmacs, abs=0.006)


def test_format_count():
    assert format_count(1_814_073_344) == "1.81G"
    assert format_count(999) == "999"
