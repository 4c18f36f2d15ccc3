"""import_model(): conversion, the name map, trainable weights, and the errors users see."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import torch
from onnx import numpy_helper

from onnxprune.errors import ShapeError, UnsupportedModelError
from onnxprune.graph.verify import run_onnxruntime
from onnxprune.importing.importer import ParamRef, import_model, run_torch
from tests.support.models import cnn_model, rand, text_model, transformer_block


@pytest.mark.parametrize("build", [cnn_model, transformer_block])
def test_import_matches_onnxruntime_and_maps_every_float_initializer(build):
    model = build()
    imported = import_model(model)
    assert imported.check is not None and imported.check.max_abs < 1e-4
    assert imported.input_names == ("x",) and imported.output_names == ("y",)
    assert set(imported.params) == {init.name for init in model.graph.initializer}
    for init in imported.onnx_model.graph.initializer:
        np.testing.assert_array_equal(imported.tensor(init.name).detach().numpy(), numpy_helper.to_array(init))
    feeds = {"x": np.random.default_rng(3).standard_normal((2, *imported.input_shapes["x"][1:])).astype(np.float32)}
    np.testing.assert_allclose(run_torch(imported, feeds)[0], run_onnxruntime(model, feeds)[0], atol=1e-5, rtol=1e-4)


def test_weights_are_trainable_parameters_and_stats_are_buffers():
    imported = import_model(cnn_model())
    trainable = {name for name in imported.params if isinstance(imported.tensor(name), torch.nn.Parameter)
                 or imported.tensor(name).requires_grad}
    assert trainable == {"cw", "cb", "s", "b", "slope", "chscale", "g1w", "g1b", "g2w", "g2b", "mw", "mb"}
    assert imported.params["g1w"] == ParamRef("fc1", "weight", transpose=False)
    assert imported.params["g2w"] == ParamRef("fc2", "weight", transpose=True)  # transB=0: torch holds W^T
    assert imported.params["mean"].attr == "running_mean"
    assert dict(imported.module.named_buffers()).keys() >= {"bn.running_mean", "bn.running_var"}


def test_gradients_reach_matmul_and_gemm_weights():
    imported = import_model(transformer_block())
    x = torch.randn(2, 4, 8)
    imported.module(x).square().sum().backward()
    for name in ("wq", "w1", "w2", "lnw", "bq"):
        grad = imported.tensor(name).grad  # none of these is transposed, so this is the leaf
        assert grad is not None and grad.abs().sum() > 0, name


def test_tensor_is_a_live_view_in_onnx_layout():
    imported = import_model(cnn_model())
    view = imported.tensor("g2w")  # Gemm transB=0: ONNX [5, 6], nn.Linear weight [6, 5]
    assert tuple(view.shape) == (5, 6)
    with torch.no_grad():
        view[0, 1] = 42.0
    linear = imported.module.get_submodule("fc2")
    assert linear.weight[1, 0].item() == 42.0


def test_unsupported_ops_are_listed_in_one_error():
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 20, "com.acme" : 1]>
    g (float[N, 3] x) => (float[N, 3] y, int64 s) {
       [foo] h = com.acme.Foo(x)
       [n7] s = Size(x)
       [relu] y = Relu(h)
    }""")
    model.graph.node[0].name = "/a/Foo"  # exporter-style name the text format cannot spell
    with pytest.raises(UnsupportedModelError) as info:
        import_model(model)
    assert str(info.value) == "cannot convert 2 ops: com.acme.Foo (node /a/Foo), Size-19 (node n7)"


def test_converter_exception_becomes_clear_error():
    # onnxruntime runs a dilated average pool; torch's AvgPool has no dilations, so our converter refuses it
    model = text_model("""
    g (float[N, 1, 6, 6] x) => (float[N, 1, 4, 4] y) {
       [pool] y = AveragePool<kernel_shape = [2, 2], dilations = [2, 2]>(x)
    }""", opset=19)
    with pytest.raises(UnsupportedModelError, match=r"^cannot convert 1 ops: AveragePool-19 \(node pool\): .*dilations"):
        import_model(model)


def test_numerical_mismatch_names_the_output():
    # onnx2torch maps every nearest Resize to torch's floor rule; round_prefer_ceil differs.
    model = text_model("""
    g (float[1, 1, 4, 4] x) => (float[1, 1, 8, 8] up) {
       [c] scales = Constant<value = float[4] {1, 1, 2, 2}>()
       [resize] up = Resize<mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "round_prefer_ceil">(x, , scales)
    }""")
    with pytest.raises(UnsupportedModelError, match=r"differs from onnxruntime at output 'up': max abs error"):
        import_model(model)


def test_dynamic_non_batch_dim_needs_input_shapes():
    model = text_model("""
    g (float[N, T, 8] x, float[8, 4] w) => (float[N, T, 4] y) {
       [mm] y = MatMul(x, w)
    }""", w=rand(8, 4))
    with pytest.raises(ShapeError, match="'T'"):
        import_model(model)
    imported = import_model(model, input_shapes={"x": (2, 5, 8)})
    assert imported.input_shapes == {"x": (2, 5, 8)}
    assert imported.onnx_model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "T"


def test_input_model_is_not_mutated_and_normalized_graph_is_kept():
    model = cnn_model()
    before = model.SerializeToString()
    imported = import_model(model)
    assert model.SerializeToString() == before
    assert [n.name for n in imported.onnx_model.graph.node] == [n.name for n in model.graph.node]


def test_torch_runtime_failure_becomes_clear_error():
    # onnx2torch's Flatten mis-handles axis=0 and fails when run.
    model = text_model("""
    g (float[2, 3] x) => (float[1, 6] y) {
       [flat0] y = Flatten<axis = 0>(x)
    }""")
    with pytest.raises(UnsupportedModelError, match="^the torch import fails on a sample input: IndexError"):
        import_model(model)


def test_float32_noise_rule_accepts_rounding_but_not_a_real_difference():
    from onnxprune.importing.importer import check_import, float32_noise

    # sin(x @ 100 W): float32 rounding of the large matmul (|h| ~ 1e3) shows up as ~2e-3 in the sine.
    model = text_model("""
    g (float[4, 512] x, float[512, 64] w) => (float[4, 64] y) {
       [mm] h = MatMul(x, w)
       [sin] y = Sin(h)
    }""", w=rand(512, 64) * 100)
    imported = import_model(model)  # torch and onnxruntime differ by more than atol, but only by noise
    assert imported.check.max_abs > 1e-4 and imported.check.float32_noise is not None
    assert imported.check.max_abs <= 4 * imported.check.float32_noise
    noise = float32_noise(imported, imported.sample_inputs())
    assert noise == [imported.check.float32_noise]
    with torch.no_grad():
        imported.tensor("w").mul_(1 + 1e-4)  # a real (if small) difference from the ONNX weights
    with pytest.raises(UnsupportedModelError, match=r"at output 'y'.*float32 noise [0-9.e-]+\)$"):
        check_import(imported)


def test_float32_noise_is_none_when_float64_cannot_run():
    from onnxprune.importing.importer import float32_noise

    model = text_model("""
    g (float[2, 3] x, float[3, 3] w) => (float[2, 3] y) {
       [to_f32] c = Cast<to = 1>(x)
       [mm] y = MatMul(c, w)
    }""", w=rand(3, 3))
    imported = import_model(model)
    assert float32_noise(imported, imported.sample_inputs()) is None


def test_gemm_with_alpha_is_refused_because_it_cannot_be_written_back():
    model = text_model("""
    g (float[N, 4] x, float[3, 4] w, float[3] b) => (float[N, 3] y) {
       [scaled_fc] y = Gemm<alpha = 2.0, transB = 1>(x, w, b)
    }""", w=rand(3, 4), b=rand(3))
    with pytest.raises(UnsupportedModelError, match=r"^cannot convert 1 ops: Gemm-13 \(node scaled_fc\): .*'w'"):
        import_model(model)
