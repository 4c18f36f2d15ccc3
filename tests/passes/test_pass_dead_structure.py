"""Dead-structure elimination: all-zero filters disappear, their constants folded exactly."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxprune.passes import eliminate_dead_structure
from onnxprune.passes.testing import initializer_shapes, model_from_text, random_feeds, run

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def _net(consumer: str, w2: str) -> str:
    return f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w1, float[8] s1, float[8] b1, float[8] m1, float[8] var1, {w2}>
{{
  c = Conv <pads=[1,1,1,1]> (x, w1)
  t = BatchNormalization (c, s1, b1, m1, var1)
  r = Relu (t)
  y = {consumer}
}}"""


def _set(model, name: str, update) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()
    update(array)
    init.CopyFrom(numpy_helper.from_array(array, name))


def _same_outputs(a, b) -> None:
    feeds = random_feeds(a, {"x": (1, 3, 8, 8)}, seed=3)
    np.testing.assert_allclose(run(b, feeds)[0], run(a, feeds)[0], atol=1e-5, rtol=1e-4)


def test_dead_filters_fold_their_constant_into_a_1x1_conv_bias() -> None:
    model = model_from_text(_net("Conv (r, w2)", "float[4,8,1,1] w2"))
    _set(model, "w1", lambda w: w.__setitem__([0, 3], 0))
    _set(model, "b1", lambda b: b.__setitem__([0, 3], [1.5, 2.0]))  # ReLU(shift) > 0: a real constant
    smaller = eliminate_dead_structure(model)
    shapes = initializer_shapes(smaller)
    assert shapes["w1"] == (6, 3, 3, 3) and shapes["w2"] == (4, 6, 1, 1)
    assert any(n.op_type == "Conv" and len(n.input) == 3 for n in smaller.graph.node)  # bias added
    _same_outputs(model, smaller)


def test_dead_filter_with_nonzero_constant_before_padded_conv_stays() -> None:
    model = model_from_text(_net("Conv <pads=[1,1,1,1]> (r, w2)", "float[4,8,3,3] w2"))
    _set(model, "w1", lambda w: w.__setitem__([2], 0))
    _set(model, "b1", lambda b: b.__setitem__([2], 3.0))  # constant 3-ish, borders would differ
    _set(model, "m1", lambda m: m.__setitem__([2], 0.0))
    smaller = eliminate_dead_structure(model)
    assert initializer_shapes(smaller)["w1"] == (8, 3, 3, 3)
    _same_outputs(model, smaller)


def test_dead_filter_clipped_to_zero_before_padded_conv_goes() -> None:
    model = model_from_text(_net("Conv <pads=[1,1,1,1]> (r, w2)", "float[4,8,3,3] w2"))
    _set(model, "w1", lambda w: w.__setitem__([2, 5], 0))
    _set(model, "b1", lambda b: b.__setitem__([2, 5], -3.0))  # ReLU of a negative constant is 0
    _set(model, "m1", lambda m: m.__setitem__([2, 5], 0.0))
    smaller = eliminate_dead_structure(model)
    assert initializer_shapes(smaller)["w2"] == (4, 6, 3, 3)
    _same_outputs(model, smaller)


def test_a_layer_keeps_one_channel_when_all_are_dead() -> None:
    model = model_from_text(_net("Conv (r, w2)", "float[4,8,1,1] w2"))
    _set(model, "w1", lambda w: w.__setitem__(slice(None), 0))
    smaller = eliminate_dead_structure(model)
    assert initializer_shapes(smaller)["w1"] == (1, 3, 3, 3)
    _same_outputs(model, smaller)


def test_nothing_dead_returns_the_model_unchanged() -> None:
    model = model_from_text(_net("Conv (r, w2)", "float[4,8,1,1] w2"))
    assert eliminate_dead_structure(model) is model
