"""Loading rejects bad files with one line; saving is atomic, never onto the input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.errors import ModelLoadError, OnnxPruneError
from onnxprune.graph.modelio import load_model, save_model_atomic
from onnxprune.graph.verify import run_onnxruntime
from tests.support.models import make_tiny_conv


def test_load_valid(tiny_conv_path):
    model = load_model(tiny_conv_path)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"this is not a protobuf at all \xff\xfe", "not a valid ONNX model"),
    ],
)
def test_load_rejects_garbage(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_load_rejects_truncated(tmp_path, tiny_conv_path):
    data = tiny_conv_path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_load_missing_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(tmp_path)


def test_load_rejects_checker_failure(tmp_path):
    model = make_tiny_conv()
    model.graph.node[0].input[1] = "missing_weight"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="checker"):
        load_model(path)


def test_save_refuses_input_path(tiny_conv_path):
    before = tiny_conv_path.read_bytes()
    with pytest.raises(OnnxPruneError, match="is the input file"):
        save_model_atomic(load_model(tiny_conv_path), tiny_conv_path, input_path=tiny_conv_path)
    assert tiny_conv_path.read_bytes() == before


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out.onnx"
    save_model_atomic(make_tiny_conv(), out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
    assert load_model(out).graph.node[0].op_type == "Conv"


def test_external_data_round_trip(tmp_path):
    """The >2 GB path (external data) written and read back, forced on a small model."""
    model = make_tiny_conv()
    out = tmp_path / "ext.onnx"
    save_model_atomic(model, out, external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    # the caller's model keeps its weights inline
    assert all(init.data_location == onnx.TensorProto.DEFAULT for init in model.graph.initializer)
    loaded = load_model(out)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")
    expected = run_onnxruntime(model, {"x": x})
    actual = run_onnxruntime(loaded, {"x": x})
    np.testing.assert_array_equal(expected[0], actual[0])
    for init in model.graph.initializer:
        got = {i.name: numpy_helper.to_array(i) for i in loaded.graph.initializer}[init.name]
        np.testing.assert_array_equal(numpy_helper.to_array(init), got)
