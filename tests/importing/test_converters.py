"""Each converter registered by onnxprune.importing.converters: torch (via import_model) against onnxruntime
on a tiny model at the op's new version, atol 1e-5 / rtol 1e-4; unsupported variants refuse with
an UnsupportedModelError naming op type, version and node."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxprune.errors import UnsupportedModelError
from onnxprune.graph.verify import run_onnxruntime
from onnxprune.importing.importer import import_model, run_torch

ATOL, RTOL = 1e-5, 1e-4


def _model(text: str, opset: int, checker: bool = True) -> onnx.ModelProto:
    model = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : {opset}]>' + text)
    if checker:
        onnx.checker.check_model(model, full_check=True)
    return model


def _check(text: str, opset: int, feeds: dict[str, np.ndarray] | None = None, checker: bool = True) -> None:
    model = _model(text, opset, checker)
    imported = import_model(model, check=False)
    feeds = feeds or imported.sample_inputs(seed=1)
    expected = run_onnxruntime(model, feeds)
    actual = run_torch(imported, feeds)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and e.dtype == a.dtype
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)


def _refused(text: str, opset: int, *fragments: str) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        import_model(_model(text, opset))
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("opset", [19, 21])
def test_identity_constant_shape_cast_reshape(opset):
    _check("""
    g (float[2, 3, 4] x) => (int64[3] s, float[2, 12] y, double[2, 3, 4] d) {
       [shape] s = Shape(x)
       [c] target = Constant<value = int64[2] {0, -1}>()
       [reshape] r = Reshape(x, target)
       [identity] y = Identity(r)
       [cast] d = Cast<to = 11>(x)
    }""", opset)


def test_reshape_allowzero_with_dynamic_shape():
    _check("""
    g (float[2, 3, 4] x) => (float[6, 4] y) {
       [shape] s = Shape(x)
       [c] k = Constant<value = int64[1] {-1}>()
       [slice_s] tail = Slice(s, k, k)
       [c2] m = Constant<value = int64[1] {-1}>()
       [cat] target = Concat<axis = 0>(m, tail)
       [c3] last = Constant<value = int64[1] {4}>()
       [cat2] t2 = Concat<axis = 0>(m, last)
       [reshape] y = Reshape<allowzero = 1>(x, t2)
    }""", 19)


def test_constant_of_shape_unsqueeze_flatten_transpose_equal():
    _check("""
    g (float[2, 3] x) => (float[2, 3] f, float[3, 2] t, bool[2, 3] e, float[1, 2, 3] u, float[2, 3] z) {
       [flat] f = Flatten<axis = 1>(x)
       [tr] t = Transpose<perm = [1, 0]>(x)
       [eq] e = Equal(x, x)
       [c] axes = Constant<value = int64[1] {0}>()
       [unsq] u = Unsqueeze(x, axes)
       [shape] s = Shape(x)
       [cos] z = ConstantOfShape<value = float[1] {0.25}>(s)
    }""", 21)


REDUCE_OPS = ["ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_18_axes_input(op, keepdims):
    out = "[2, 1, 1]" if keepdims else "[2]"
    _check(f"""
    g (float[2, 3, 4] x) => (float{out} y, float{"[1, 1, 1]" if keepdims else ""} all) {{
       [c] axes = Constant<value = int64[2] {{1, -1}}>()
       [red] y = {op}<keepdims = {keepdims}>(x, axes)
       [red_all] all = {op}<keepdims = {keepdims}>(x)
    }}""", 18)


def test_reduce_logsum_and_noop_with_empty_axes():
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32)
    _check("""
    g (float[2, 3, 4] x) => (float[2, 3, 1] y, float[2, 3, 4] same) {
       [c] axes = Constant<value = int64[1] {2}>()
       [red] y = ReduceLogSum(x, axes)
       [noop] same = ReduceMean<noop_with_empty_axes = 1>(x)
    }""", 18, {"x": x})


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_min_20(op):
    _check(f"""
    g (float[2, 3, 4] x) => (float[2, 3] y) {{
       [c] axes = Constant<value = int64[1] {{2}}>()
       [red] y = {op}<keepdims = 0>(x, axes)
    }}""", 20)


def test_reduce_with_computed_axes_is_refused():
    _refused("""
    g (float[2, 3, 4] x, int64[1] axes) => (float[2, 3, 1] y) {
       [red_dyn] y = ReduceMean(x, axes)
    }""", 18, "ReduceMean-18 (node red_dyn)", "axes must be a constant")


def test_split_18_num_outputs_uneven_and_split_input():
    _check("""
    g (float[2, 7] x) => (float[2, 3] a, float[2, 3] b, float[2, 1] c, float[2, 2] d, float[2, 5] e) {
       [split3] a, b, c = Split<axis = 1, num_outputs = 3>(x)
       [c] sizes = Constant<value = int64[2] {2, 5}>()
       [split2] d, e = Split<axis = 1>(x, sizes)
    }""", 18)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20(approximate):
    _check(f"""
    g (float[2, 5] x) => (float[2, 5] y) {{
       [gelu] y = Gelu<approximate = "{approximate}">(x)
    }}""", 20)


def test_mish_18():
    _check("""
    g (float[2, 5] x) => (float[2, 5] y) {
       [mish] y = Mish(x)
    }""", 18)


@pytest.mark.parametrize("opset", [18, 19, 21])
def test_pad_with_and_without_axes(opset):
    _check("""
    g (float[1, 2, 4, 4] x) => (float[1, 2, 7, 5] y, float[1, 2, 6, 6] z, float[1, 2, 6, 6] r) {
       [c1] pads = Constant<value = int64[4] {1, 0, 2, 1}>()
       [c2] axes = Constant<value = int64[2] {2, -1}>()
       [c3] v = Constant<value = float {1.5}>()
       [pad_axes] y = Pad(x, pads, v, axes)
       [c4] full = Constant<value = int64[8] {0, 0, 1, 1, 0, 0, 1, 1}>()
       [pad_full] z = Pad(x, full)
       [pad_reflect] r = Pad<mode = "reflect">(x, full)
    }""", opset)


def test_pad_wrap_is_refused():
    _refused("""
    g (float[1, 2, 4, 4] x) => (float[1, 2, 6, 6] y) {
       [c] pads = Constant<value = int64[8] {0, 0, 1, 1, 0, 0, 1, 1}>()
       [pad_wrap] y = Pad<mode = "wrap">(x, pads)
    }""", 19, "Pad-19 (node pad_wrap)", "wrap")


@pytest.mark.parametrize("opset", [18, 19])
def test_resize_linear_and_nearest(opset):
    _check("""
    g (float[1, 2, 4, 4] x) => (float[1, 2, 8, 8] y, float[1, 2, 8, 8] n) {
       [c] scales = Constant<value = float[4] {1, 1, 2, 2}>()
       [up] y = Resize<mode = "linear">(x, , scales)
       [up_nearest] n = Resize<mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor">(x, , scales)
    }""", opset)


def test_resize_antialias_is_refused():
    _refused("""
    g (float[1, 2, 8, 8] x) => (float[1, 2, 4, 4] y) {
       [c] scales = Constant<value = float[4] {1, 1, 0.5, 0.5}>()
       [down] y = Resize<mode = "linear", antialias = 1>(x, , scales)
    }""", 18, "Resize-18 (node down)", "antialias")


def test_average_pool_19():
    _check("""
    g (float[1, 2, 6, 6] x) => (float[1, 2, 3, 3] y) {
       [pool] y = AveragePool<kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], count_include_pad = 0>(x)
    }""", 19)


def test_average_pool_19_dilations_refused():
    _refused("""
    g (float[1, 2, 6, 6] x) => (float[1, 2, 4, 4] y) {
       [pool_dil] y = AveragePool<kernel_shape = [2, 2], dilations = [2, 2]>(x)
    }""", 19, "AveragePool-19 (node pool_dil)", "dilations")


def test_double_registration_raises():
    from onnxprune.importing.converters._common import reuse

    with pytest.raises(ValueError, match="already registered"):
        reuse("Identity", 16, 19)


@pytest.mark.parametrize("opset,scale,bias", [
    (18, "float[2] {1.5, 0.5}", "float[2] {0.1, -0.2}"),  # per group
    (21, "float[6] {1.5, 0.5, 2, 1, 0.25, 3}", "float[6] {0.1, -0.2, 0.3, 0, 1, -1}"),  # per channel
])
def test_group_normalization(opset, scale, bias):
    _check(f"""
    g (float[2, 6, 3, 3] x) => (float[2, 6, 3, 3] y) {{
       [c1] s = Constant<value = {scale}>()
       [c2] b = Constant<value = {bias}>()
       [gn] y = GroupNormalization<num_groups = 2, epsilon = 0.001>(x, s, b)
    }}""", opset, checker=opset >= 21)  # onnx's checker rejects the deprecated GroupNormalization-18
