"""normalize(): weights hidden in Constant / Identity nodes or shared between ops become one
initializer per consuming op; everything else about the graph is kept and outputs are unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

from onnxprune.graph.verify import run_onnxruntime
from onnxprune.importing.normalize import normalize

HEADER = '<ir_version: 9, opset_import: ["" : 20], metadata_props: ["author" : "me"]>'


def _parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def _assert_same_outputs(original: onnx.ModelProto, normalized: onnx.ModelProto, shape=(2, 3)) -> None:
    onnx.checker.check_model(normalized, full_check=True)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = run_onnxruntime(original, {"x": x})
    actual = run_onnxruntime(normalized, {"x": x})
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-4)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_constant_weight_becomes_initializer_and_input_is_not_mutated():
    model = _parse("""
    g (float[N, 3] x) => (float[N, 2] y) {
       [w_const] w = Constant<value = float[3, 2] {1, 2, 3, 4, 5, 6}>()
       [s_const] s = Constant<value_float = 0.5>()
       [mm] h = MatMul(x, w)
       [scale] y = Mul(h, s)
    }""")
    before = model.SerializeToString()
    out = normalize(model)
    assert model.SerializeToString() == before
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Mul"]
    inits = _inits(out)
    np.testing.assert_array_equal(inits["w"], np.arange(1, 7, dtype=np.float32).reshape(3, 2))
    assert inits["s"].dtype == np.float32 and float(inits["s"]) == 0.5
    _assert_same_outputs(model, out)


def test_identity_shared_weights_become_one_initializer_per_op():
    # The TorchScript exporter shares an equal initializer W through Identity nodes.
    model = _parse("""
    g (float[N, 3] x) => (float[N, 2] y) <float[3, 2] W = {1, 2, 3, 4, 5, 6}> {
       [id_a] a = Identity(W)
       [id_b] b = Identity(W)
       [mm1] h1 = MatMul(x, a)
       [mm2] h2 = MatMul(x, b)
       [add] y = Add(h1, h2)
    }""")
    out = normalize(model)
    assert [n.name for n in out.graph.node] == ["mm1", "mm2", "add"]
    inits = _inits(out)
    assert set(inits) == {"a", "b"}  # W itself is no longer read by anything
    np.testing.assert_array_equal(inits["a"], inits["b"])
    assert out.graph.node[0].input[1] == "a" and out.graph.node[1].input[1] == "b"
    _assert_same_outputs(model, out)


def test_identity_chain_and_identity_feeding_two_ops():
    model = _parse("""
    g (float[N, 3] x) => (float[N, 3] y) <float[3] B = {1, 2, 3}> {
       [id1] a = Identity(B)
       [id2] b = Identity(a)
       [add1] h = Add(x, b)
       [add2] y = Add(h, b)
    }""")
    out = normalize(model)
    assert [n.op_type for n in out.graph.node] == ["Add", "Add"]
    first, second = out.graph.node[0].input[1], out.graph.node[1].input[1]
    assert first == "b" and second != first and second.startswith("b__")
    assert set(_inits(out)) == {first, second}
    _assert_same_outputs(model, out)


def test_shared_float_initializer_is_split_but_scalars_and_ints_are_not():
    model = _parse("""
    g (float[N, 3] x) => (float[N, 3] y)
    <float[3, 3] W = {1, 0, 0, 0, 2, 0, 0, 0, 3}, float half = {0.5}, int64[2] shape = {-1, 3}> {
       [mm1] h1 = MatMul(x, W)
       [mm2] h2 = MatMul(h1, W)
       [m1] h3 = Mul(h2, half)
       [m2] h4 = Mul(h3, half)
       [r1] h5 = Reshape(h4, shape)
       [r2] y = Reshape(h5, shape)
    }""")
    out = normalize(model)
    mm1, mm2 = out.graph.node[0], out.graph.node[1]
    assert mm1.input[1] == "W" and mm2.input[1] == "W__1"
    assert out.graph.node[2].input[1] == out.graph.node[3].input[1] == "half"
    assert out.graph.node[4].input[1] == out.graph.node[5].input[1] == "shape"
    _assert_same_outputs(model, out)


def test_graph_io_names_dynamic_axes_opset_metadata_and_outputs_kept():
    model = _parse("""
    g (float[N, 3] x) => (float[N, 3] y, float[3] c) <float[3] B = {1, 2, 3}> {
       [id_out] c = Identity(B)
       [add] y = Add(x, c)
    }""")
    model.doc_string = "user model"
    out = normalize(model)
    assert out.graph.input == model.graph.input
    assert out.graph.output == model.graph.output
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert out.opset_import == model.opset_import
    assert out.ir_version == model.ir_version and out.doc_string == "user model"
    assert [(p.key, p.value) for p in out.metadata_props] == [("author", "me")]
    # An Identity that produces a graph output stays: its name is part of the interface.
    assert [n.name for n in out.graph.node] == ["id_out", "add"]
    _assert_same_outputs(model, out)


def test_shape_inference_records_intermediate_shapes():
    model = _parse("""
    g (float[N, 3] x) => (float[N, 2] y) <float[3, 4] W1 = {1,2,3,4,5,6,7,8,9,10,11,12}, float[4, 2] W2 = {1,2,3,4,5,6,7,8}> {
       [mm1] h = MatMul(x, W1)
       [relu] r = Relu(h)
       [mm2] y = MatMul(r, W2)
    }""")
    out = normalize(model)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert shapes["h"] == ["N", 4] and shapes["r"] == ["N", 4]
