"""One tiny model per op rule and variant, written in ONNX text.

Each case: the checker passes before and after, the groups are prunable (or frozen with the
expected reason), half of every prunable group's channels are removed, the weights have the
expected shapes afterwards, and onnxruntime on the rewritten model equals the masked reference
(atol 1e-5, rtol 1e-4) with exactly the predicted MACs.
"""

from __future__ import annotations

import pytest

from onnxprune.passes import analyze
from onnxprune.passes.testing import check_exact, initializer_shapes, model_from_text, random_plan

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
H20 = '<ir_version: 9, opset_import: ["" : 20]>'


def bn(i: int, c: int = 8) -> str:
    return f"float[{c}] s{i}, float[{c}] b{i}, float[{c}] m{i}, float[{c}] var{i}"


def conv_net(middle: str, decl: str = "", header: str = H17) -> str:
    """x -> Conv(8) -> BN -> {middle: t -> u} -> Conv(4, 1x1) -> y; ``middle`` reads ``t``."""
    return f"""{header}
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w1, {bn(1)}, float[4,8,1,1] w2, float[4] bias2{decl}>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t = BatchNormalization (c1, s1, b1, m1, var1)
  {middle}
  y = Conv (u, w2, bias2)
}}"""


CASES = {
    # --- convolutions -------------------------------------------------------------------
    "conv_plain": (conv_net("u = Relu (t)"), {"w1": (4, 3, 3, 3), "w2": (4, 4, 1, 1), "s1": (4,)}, {}),
    "conv_bias_without_norm": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,4,4] y) <float[8,3,3,3] w1, float[8] k1, float[4,8,3,3] w2>
{{
  c = Conv <pads=[1,1,1,1]> (x, w1, k1)
  r = Relu (c)
  y = Conv <strides=[2,2], pads=[1,1,1,1]> (r, w2)
}}""", {"w1": (4, 3, 3, 3), "k1": (4,), "w2": (4, 4, 3, 3)}, {}),
    "conv_depthwise": (conv_net(
        "r = Relu (t)\n  d = Conv <group=8, pads=[1,1,1,1]> (r, wd)\n  e = BatchNormalization (d, s2, b2, m2, var2)\n"
        "  u = Clip (e, lo, hi)", f", float[8,1,3,3] wd, {bn(2)}, float lo = {{0.0}}, float hi = {{6.0}}"),
        {"wd": (4, 1, 3, 3), "s2": (4,), "w2": (4, 4, 1, 1)}, {}),
    "conv_depthwise_with_bias": (conv_net(
        "r = Relu (t)\n  u = Conv <group=8, pads=[1,1,1,1]> (r, wd, kd)", ", float[8,1,3,3] wd, float[8] kd"),
        {"wd": (4, 1, 3, 3), "kd": (4,)}, {}),
    "conv_grouped": (conv_net("r = Relu (t)\n  g = Conv <group=2, pads=[1,1,1,1]> (r, wg)\n  u = Relu (g)",
                              ", float[8,4,3,3] wg"), {"w1": (8, 3, 3, 3), "wg": (4, 4, 3, 3), "w2": (4, 4, 1, 1)},
                     {"w1": "grouped Conv"}),
    "convtranspose_plain": (f"""{H17}
g (float[1,3,4,4] x) => (float[1,2,8,8] y) <float[8,3,1,1] w1, {bn(1)}, float[8,2,2,2] wt, float[2] kt>
{{
  c = Conv (x, w1)
  t = BatchNormalization (c, s1, b1, m1, var1)
  r = Relu (t)
  y = ConvTranspose <strides=[2,2]> (r, wt, kt)
}}""", {"w1": (4, 3, 1, 1), "wt": (4, 2, 2, 2)}, {}),
    # --- normalization and per-channel constants -----------------------------------------
    "instancenorm_per_channel": (conv_net("i = InstanceNormalization (t, si, bi)\n  u = Relu (i)",
                                          ", float[8] si, float[8] bi"), {"si": (4,), "bi": (4,)}, {}),
    "add_per_channel_constant": (conv_net("a = Add (t, k)\n  u = Relu (a)", ", float[8,1,1] k"), {"k": (4, 1, 1)}, {}),
    "mul_per_channel_constant": (conv_net("a = Mul (t, k)\n  u = Relu (a)", ", float[1,8,1,1] k"), {"k": (1, 4, 1, 1)}, {}),
    "sub_div_constants": (conv_net("a = Sub (t, k)\n  v = Div (a, q)\n  u = Relu (v)", ", float[8,1,1] k, float[8,1,1] q"),
                          {"k": (4, 1, 1), "q": (4, 1, 1)}, {}),
    "add_scalar_then_padded_conv_frozen": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,1,1] w1, float one = {{1.0}}, float[4,8,3,3] w2>
{{
  c = Conv (x, w1)
  a = Add (c, one)
  y = Conv <pads=[1,1,1,1]> (a, w2)
}}""", {"w1": (8, 3, 1, 1)}, {"w1": "non-foldable"}),
    "add_scalar_folds_into_1x1": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,1,1] w1, float one = {{1.0}}, float[4,8,1,1] w2>
{{
  c = Conv (x, w1)
  a = Add (c, one)
  y = Conv (a, w2)
}}""", {"w1": (4, 3, 1, 1), "w2": (4, 4, 1, 1)}, {}),
    # --- unary activations ---------------------------------------------------------------
    "relu6_clip": (conv_net("u = Clip (t, lo, hi)", ", float lo = {0.0}, float hi = {6.0}"), {"w2": (4, 4, 1, 1)}, {}),
    "sigmoid_folds_into_1x1": (conv_net("u = Sigmoid (t)"), {"w2": (4, 4, 1, 1)}, {}),
    "hardsigmoid_folds_into_1x1": (conv_net("u = HardSigmoid (t)"), {"w2": (4, 4, 1, 1)}, {}),
    "hardswish": (conv_net("u = HardSwish (t)"), {"w2": (4, 4, 1, 1)}, {}),
    "leakyrelu": (conv_net("u = LeakyRelu <alpha=0.1> (t)"), {"w2": (4, 4, 1, 1)}, {}),
    "prelu_per_channel_slope": (conv_net("u = PRelu (t, sl)", ", float[8,1,1] sl"), {"sl": (4, 1, 1)}, {}),
    "gelu": (conv_net("u = Gelu (t)", header=H20), {"w2": (4, 4, 1, 1)}, {}),
    "erf_gelu_chain": (conv_net(
        "h = Div (t, sq)\n  e = Erf (h)\n  p = Add (e, one)\n  q = Mul (t, p)\n  u = Mul (q, half)",
        ", float sq = {1.4142135}, float one = {1.0}, float half = {0.5}"), {"w2": (4, 4, 1, 1)}, {}),
    "tanh": (conv_net("u = Tanh (t)"), {"w2": (4, 4, 1, 1)}, {}),
    "silu_mul_sigmoid": (conv_net("sg = Sigmoid (t)\n  u = Mul (t, sg)"), {"w2": (4, 4, 1, 1)}, {}),
    # --- spatial ops ---------------------------------------------------------------------
    "maxpool": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,4,4] y) <float[8,3,3,3] w1, {bn(1)}, float[4,8,3,3] w2>
{{
  c = Conv <pads=[1,1,1,1]> (x, w1)
  t = BatchNormalization (c, s1, b1, m1, var1)
  r = Relu (t)
  p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
  y = Conv <pads=[1,1,1,1]> (p, w2)
}}""", {"w2": (4, 4, 3, 3)}, {}),
    "averagepool_counting_pads": (conv_net(
        "r = Relu (t)\n  u = AveragePool <kernel_shape=[3,3], pads=[1,1,1,1], count_include_pad=1> (r)"),
        {"w2": (4, 4, 1, 1)}, {}),
    "pad_reflect_and_resize": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,18,18] y) <float[8,3,3,3] w1, {bn(1)}, float[4,8,3,3] w2, int64[8] pads = {{0,0,1,1,0,0,1,1}}, float[4] sc = {{1.0, 1.0, 2.0, 2.0}}>
{{
  c = Conv <pads=[1,1,1,1]> (x, w1)
  t = BatchNormalization (c, s1, b1, m1, var1)
  r = Relu (t)
  p = Pad <mode="reflect"> (r, pads)
  s = Resize <mode="nearest"> (p, , sc)
  y = Conv (s, w2)
}}""", {"w2": (4, 4, 3, 3)}, {}),
    "resize_sizes": (conv_net("r = Relu (t)\n  u = Resize <mode=\"nearest\"> (r, , , sz)", ", int64[4] sz = {1, 8, 8, 8}"),
                     {"w2": (4, 4, 1, 1)}, {}),
    "reducemean_spatial_se": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w1, {bn(1)}, float[2,8,1,1] wa, float[2] ka, float[8,2,1,1] wb, float[8] kb, float[4,8,1,1] w2>
{{
  c = Conv <pads=[1,1,1,1]> (x, w1)
  t = BatchNormalization (c, s1, b1, m1, var1)
  r = Relu (t)
  m = ReduceMean <keepdims=1, axes=[2, 3]> (r)
  a = Conv (m, wa, ka)
  ar = Relu (a)
  b = Conv (ar, wb, kb)
  gate = HardSigmoid (b)
  se = Mul (r, gate)
  y = Conv (se, w2)
}}""", {"wb": (4, 1, 1, 1), "kb": (4,), "w2": (4, 4, 1, 1), "wa": (1, 4, 1, 1)}, {}),
    "squeeze_excite_global_pool": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y)
<float[8,3,3,3] w1, {bn(1)}, float[4,8,1,1] wa, float[4] ka, float[8,4,1,1] wb, float[8] kb, float[4,8,1,1] w2>
{{
  c = Conv <pads=[1,1,1,1]> (x, w1)
  t = BatchNormalization (c, s1, b1, m1, var1)
  r = Relu (t)
  m = GlobalAveragePool (r)
  a = Conv (m, wa, ka)
  ar = Relu (a)
  b = Conv (ar, wb, kb)
  gate = Sigmoid (b)
  se = Mul (r, gate)
  y = Conv (se, w2)
}}""", {"wb": (4, 2, 1, 1), "w2": (4, 4, 1, 1)}, {}),
    # --- residuals, concat, split, slice -------------------------------------------------
    "residual_add": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, {bn(1)}, float[8,8,3,3] w2, {bn(2)}, float[4,8,1,1] w3>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  c2 = Conv <pads=[1,1,1,1]> (r1, w2)
  t2 = BatchNormalization (c2, s2, b2, m2, var2)
  a = Add (r1, t2)
  r2 = Relu (a)
  y = Conv (r2, w3)
}}""", {"w1": (4, 3, 3, 3), "w2": (4, 4, 3, 3), "s2": (4,), "w3": (4, 4, 1, 1)}, {}),
    "concat_channels": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, {bn(1)}, float[6,3,1,1] w2, {bn(2, 6)}, float[4,14,3,3] w3>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  c2 = Conv (x, w2)
  t2 = BatchNormalization (c2, s2, b2, m2, var2)
  r2 = Relu (t2)
  cat = Concat <axis=1> (r1, r2)
  y = Conv <pads=[1,1,1,1]> (cat, w3)
}}""", {"w1": (4, 3, 3, 3), "w2": (3, 3, 1, 1), "w3": (4, 7, 3, 3)}, {}),
    "concat_with_graph_input": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, {bn(1)}, float[4,11,1,1] w3>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  cat = Concat <axis=1> (r1, x)
  y = Conv (cat, w3)
}}""", {"w1": (8, 3, 3, 3)}, {"w1": "unknown channels"}),
    "split_at_concat_offsets": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, {bn(1)}, float[6,3,1,1] w2, float[4,8,1,1] wa, float[4,6,1,1] wb, int64[2] sp = {{8, 6}}>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  c2 = Conv (x, w2)
  r2 = Relu (c2)
  cat = Concat <axis=1> (r1, r2)
  e = Relu (cat)
  p, q = Split <axis=1> (e, sp)
  ya = Conv (p, wa)
  yb = Conv (q, wb)
  y = Add (ya, yb)
}}""", {"wa": (4, 4, 1, 1), "wb": (4, 3, 1, 1)}, {}),
    "split_inside_one_producer_chunks": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, float[4,4,1,1] wa, float[4,4,1,1] wb, int64[2] sp = {{4, 4}}>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  p, q = Split <axis=1> (c1, sp)
  ya = Conv (p, wa)
  yb = Conv (q, wb)
  y = Add (ya, yb)
}}""", {"w1": (4, 3, 3, 3), "wa": (4, 2, 1, 1), "wb": (4, 2, 1, 1)}, {}),
    "split_inside_a_concat_input_chunks": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, float[4,3,1,1] w2, float[4,6,1,1] wa, float[4,6,1,1] wb, int64[2] sp = {{6, 6}}>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  c2 = Conv (x, w2)
  cat = Concat <axis=1> (c1, c2)
  p, q = Split <axis=1> (cat, sp)
  ya = Conv (p, wa)
  yb = Conv (q, wb)
  y = Add (ya, yb)
}}""", {"w1": (4, 3, 3, 3), "w2": (2, 3, 1, 1), "wa": (4, 3, 1, 1), "wb": (4, 3, 1, 1)}, {}),
    "split_inside_a_grouped_conv_frozen": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,1,1] w1, float[8,4,3,3] wg, float[4,2,1,1] wa, float[4,6,1,1] wb, int64[2] sp = {{2, 6}}>
{{
  c1 = Conv (x, w1)
  g = Conv <group=2, pads=[1,1,1,1]> (c1, wg)
  p, q = Split <axis=1> (g, sp)
  ya = Conv (p, wa)
  yb = Conv (q, wb)
  y = Add (ya, yb)
}}""", {"wg": (8, 4, 3, 3)}, {"wg": "cuts inside", "w1": "grouped Conv"}),
    "slice_channel_offsets": (f"""{H17}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[8,3,3,3] w1, float[6,3,1,1] w2, float[4,6,1,1] wb, int64[1] st = {{8}}, int64[1] en = {{14}}, int64[1] ax = {{1}}>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  c2 = Conv (x, w2)
  cat = Concat <axis=1> (c1, c2)
  q = Slice (cat, st, en, ax)
  y = Conv (q, wb)
}}""", {"w2": (3, 3, 1, 1), "wb": (4, 3, 1, 1)}, {}),
    # --- flatten/reshape into Gemm/MatMul, MLPs, transformer feed-forward ------------------
    "flatten_gemm": (f"""{H17}
g (float[1,3,4,4] x) => (float[1,10] y) <float[8,3,3,3] w1, {bn(1)}, float[10,128] wf, float[10] kf, float[10,6] wg, float[10,6] wh>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  r1 = Relu (t1)
  f = Flatten (r1)
  h = Gemm <transB=1> (f, wf, kf)
  hr = Relu (h)
  z = Gemm (hr, wg)
  y = Gemm <transB=1> (z, wh)
}}""", {"wf": (5, 64), "wg": (5, 3)}, {}),
    "reshape_matmul": (f"""{H17}
g (float[1,3,4,4] x) => (float[1,10] y) <float[8,3,3,3] w1, float[128,10] wf, int64[2] shp = {{1, 128}}, float[10,10] wo>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  r1 = Relu (c1)
  f = Reshape (r1, shp)
  h = MatMul (f, wf)
  y = MatMul (h, wo)
}}""", {"w1": (4, 3, 3, 3), "wf": (64, 5), "wo": (5, 10)}, {}),
    "transformer_ffn_layernorm": (f"""{H17}
g (float[1,5,8] x) => (float[1,5,8] y) <float[8,8] we, float[8] ke, float[8] lg, float[8] lb, float[8,16] w1, float[16] k1, float[16,8] w2, float[8] k2, float[8] lg2, float[8] lb2>
{{
  e0 = MatMul (x, we)
  e = Add (e0, ke)
  n = LayerNormalization <axis=-1> (e, lg, lb)
  h0 = MatMul (n, w1)
  h = Add (h0, k1)
  a = Gelu (h)
  o0 = MatMul (a, w2)
  o = Add (o0, k2)
  r = Add (e, o)
  y = LayerNormalization <axis=-1> (r, lg2, lb2)
}}""".replace(H17, H20), {"w1": (8, 8), "k1": (8,), "w2": (8, 8)}, {"we": "LayerNormalization"}),
    "sigmoid_folds_into_gemm_alpha_beta": (f"""{H17}
g (float[1,3,4,4] x) => (float[1,10] y) <float[8,3,3,3] w1, {bn(1)}, float[10,8] wf, float[10] kf>
{{
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  t1 = BatchNormalization (c1, s1, b1, m1, var1)
  s = Sigmoid (t1)
  p = GlobalAveragePool (s)
  f = Flatten (p)
  y = Gemm <transB=1, alpha=0.5, beta=2.0> (f, wf, kf)
}}""", {"w1": (4, 3, 3, 3), "wf": (10, 4)}, {}),
    "sigmoid_folds_into_matmul_graph_output": (f"""{H17}
g (float[2,6] x) => (float[2,5] y) <float[6,8] wa, float[8,5] wb>
{{
  h = MatMul (x, wa)
  s = Sigmoid (h)
  y = MatMul (s, wb)
}}""", {"wa": (6, 4), "wb": (4, 5)}, {}),
    "unknown_op_freezes": (conv_net("u = LRN <size=3> (t)"), {"w1": (8, 3, 3, 3)}, {"w1": "no rule for op LRN"}),
    "softmax_over_channels_freezes": (conv_net("u = Softmax <axis=1> (t)"), {"w1": (8, 3, 3, 3)}, {"w1": "normalizes over the channels"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_rule(case: str) -> None:
    text, expected_shapes, frozen = CASES[case]
    model = model_from_text(text)
    analysis = analyze(model)
    groups = {g.id: g for g in analysis.groups}
    for group_id, reason in frozen.items():
        assert not groups[group_id].prunable and reason in groups[group_id].reason, groups[group_id]
    for group_id in set(groups) - set(frozen):  # everything else is prunable, bar the output layer
        assert groups[group_id].prunable or "graph output" in groups[group_id].reason, groups[group_id]
    plan = random_plan(analysis, seed=1, fraction=0.5)
    checked = check_exact(model, plan, analysis=analysis)
    shapes = initializer_shapes(checked.pruned)
    for name, shape in expected_shapes.items():
        assert shapes[name] == shape, f"{name}: {shapes[name]} != {shape}"
    assert checked.macs == checked.predicted_macs
    assert (checked.macs < analysis.total_macs) == bool(plan.kept)
