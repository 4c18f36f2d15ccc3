"""Transformers: attention heads, the hidden size and whole sublayers, pruned and verified.

A tiny BERT-style encoder (2 heads, 2 layers, tests/support/encoders.py) and torchvision's
VisionTransformer at 32x32, each through both exporters: every plan is applied physically and
onnxruntime on the result must equal the masked ONNX reference (atol 1e-5, rtol 1e-4), and for
the encoder also torch with the same heads, units and sublayers zeroed.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from onnxprune.importing.normalize import normalize
from onnxprune.passes.analysis import AnalysisOptions
from onnxprune.passes.groups import analyze
from onnxprune.passes.plan import PruningPlan
from onnxprune.passes.testing import ATOL, RTOL, check_exact, random_feeds, run
from tests.support.encoders import SEQ, export_bert, tiny_bert, tiny_vit, token_feeds
from tests.support.torch_models import export

EXPORTERS = ["torchscript", "dynamo"]


@pytest.fixture(scope="module")
def bert_models():
    model = tiny_bert()
    return model, {name: normalize(export_bert(model, name == "dynamo")) for name in EXPORTERS}


@pytest.fixture(scope="module")
def vit_models():
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    return model, {name: normalize(export(model, x, name == "dynamo", None)) for name in EXPORTERS}


def _heads(analysis):
    return [g for g in analysis.groups if g.prunable and any(t.block > 1 for t in g.gate_tensors)]


def _ffn(analysis):
    return [g for g in analysis.prunable_groups if g not in _heads(analysis) and g.size > 16]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bert_heads_ffn_and_sublayers_match_masked_torch(bert_models, exporter):
    torch_model, models = bert_models
    model = models[exporter]
    analysis = analyze(model)
    heads, ffn = _heads(analysis), _ffn(analysis)
    assert [g.size for g in heads] == [2, 2] and [g.size for g in ffn] == [32, 32]
    for group in heads:  # V's columns and bias, d = 8 per head; Q and K are sliced, not gated
        assert {t.block for t in group.gate_tensors} == {8} and len(group.gate_tensors) == 2
        assert sum(t.block == 8 for t in group.producers) == 6 and group.consumers[0].block == 8
    branches = sorted(analysis.residual_branches, key=lambda b: -b.macs)
    assert len(branches) == 4  # LN(x + Attn(x)) and LN(h + FFN(h)) in each layer (post-LN)
    # layer 0 keeps head 1, layer 1 head 0; FFN keeps 10 units; layer 1's FFN sublayer is dropped
    ffn_branch = analysis.branch(ffn[1].branch)
    plan = PruningPlan(kept={heads[0].id: (1,), heads[1].id: (0,), ffn[0].id: tuple(range(0, 30, 3))},
                       dropped_branches=(ffn_branch.id,))
    feeds = token_feeds()
    checked = check_exact(model, plan, analysis=analysis, feeds=feeds)
    assert checked.macs == checked.predicted_macs < analysis.total_macs
    # attention's QK^T and AV MACs scale with the kept heads
    qk = [t for t in analysis.mac_terms if t.inputs and not t.outputs]
    assert len(qk) == 4 and all(p.group in {h.id for h in heads} for t in qk for p in t.inputs)

    masked = copy.deepcopy(torch_model)
    with torch.no_grad():
        for layer, keep in zip(masked.layers, (1, 0)):
            drop = slice(8 * (1 - keep), 8 * (2 - keep))
            layer.attention.value.weight[drop] = 0
            layer.attention.value.bias[drop] = 0
        removed = sorted(set(range(32)) - set(range(0, 30, 3)))
        masked.layers[0].intermediate.weight[removed] = 0
        masked.layers[0].intermediate.bias[removed] = 0
        masked.layers[1].output.weight.zero_()
        masked.layers[1].output.bias.zero_()
        expected = masked(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))).numpy()
    np.testing.assert_allclose(run(checked.pruned, feeds)[0], expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bert_hidden_size_is_exact_with_padded_layernorms(bert_models, exporter):
    model = bert_models[1][exporter]
    default = analyze(model)
    stream = next(g for g in default.groups if g.size == 16 and "LayerNormalization" in g.reason)
    assert not stream.prunable  # off by default: behaviour unchanged
    analysis = analyze(model, hidden_size=True)
    stream = next(g for g in analysis.groups if g.id == stream.id)
    assert stream.prunable and not stream.approximate and len(analysis.padded_norms) == 5
    heads = _heads(analysis)
    plan = PruningPlan(kept={stream.id: (0, 2, 3, 5, 7, 8, 11, 12, 13, 15), heads[0].id: (0,)},
                       meta={"hidden_size": True})
    feeds = token_feeds(seed=1)
    checked = check_exact(model, plan, analysis=analysis, feeds=feeds)
    assert checked.macs == checked.predicted_macs
    ops = [n.op_type for n in checked.pruned.graph.node]
    assert ops.count("Pad") == 5 and ops.count("LayerNormalization") == 5

    # 'narrow' keeps the LayerNormalizations narrow: approximate, and the group says so
    narrow = analyze(model, options=AnalysisOptions(hidden_size=True, hidden_norm="narrow"))
    assert not narrow.padded_norms and "pruned width" in narrow.group(stream.id).approximate


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_vit_heads_hidden_and_sublayers(vit_models, exporter):
    model = vit_models[1][exporter]
    analysis = analyze(model, hidden_size=True)
    heads = _heads(analysis)  # the packed in_proj cut into Q, K and V: one group of 2 heads per layer
    assert [g.size for g in heads] == [2, 2]
    assert all(sum(t.block == 16 for t in g.producers) == 6 for g in heads)
    stream = next(g for g in analysis.prunable_groups if g.size == 32)
    names = {t.name for t in (*stream.producers, *stream.consumers)}
    assert {"encoder.pos_embedding", "heads.head.weight"} <= names and names & {"class_token", "expand"}
    mlp = [g for g in analysis.prunable_groups if g.size == 64]
    assert len(analysis.residual_branches) == 4  # x + Attn(LN(x)) and x + MLP(LN(x)) (pre-LN)
    # layer 0's attention sublayer dropped; layer 1 keeps head 1 and half its MLP; 18 of 32 hidden
    plan = PruningPlan(kept={heads[1].id: (1,), mlp[1].id: tuple(range(0, 64, 2)),
                             stream.id: tuple(range(0, 32, 4)) + tuple(range(1, 32, 4)) + (2, 3)},
                       dropped_branches=(heads[0].branch,), meta={"hidden_size": True})
    feeds = random_feeds(model, analysis.input_shapes)
    checked = check_exact(model, plan, analysis=analysis, feeds=feeds)
    assert checked.macs == checked.predicted_macs < 0.8 * analysis.total_macs


def _embedding_widths(model: onnx.ModelProto) -> list[int]:
    """The width of every embedding table (an initializer a Gather reads rows of)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [inits[n.input[0]].dims[1] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]


@pytest.mark.parametrize("hidden", [False, True], ids=["heads-and-units", "prune-hidden-size"])
def test_end_to_end_lagrangian_on_the_encoder(bert_models, tmp_path, hidden):
    from onnxprune.cli.main import main

    path, calib, out = tmp_path / "bert.onnx", tmp_path / "tokens.npz", tmp_path / "out.onnx"
    onnx.save(export_bert(bert_models[0], dynamo=False), str(path))
    rng = np.random.default_rng(0)
    mask = np.ones((48, 8), np.int64)
    mask[:, 6:] = 0
    np.savez(calib, input_ids=rng.integers(0, 50, (48, 8)).astype(np.int64), attention_mask=mask)
    code = main(["prune", str(path), "--method", "lagrangian", "--target-macs", "0.5", "--calib", str(calib),
                 "--out", str(out), "--epochs", "2", "--batch-size", "16", "--quiet", "--device", "cpu",
                 "--channel-multiple", "1",
                 # random weights, 2 epochs: what is checked is the rewrite (verified), not the quality
                 *(["--prune-hidden-size", "--collapse-agreement", "0"] if hidden else [])])
    assert code == 0  # the pipeline verified the pruned model against the trained torch model
    from onnxprune.graph.macs import count_macs

    before, after = count_macs(onnx.load(str(path))).total_macs, count_macs(onnx.load(str(out))).total_macs
    assert after <= 0.5 * before
    assert run(onnx.load(str(out)), token_feeds())[0].shape == (1, 3)
    widths = _embedding_widths(onnx.load(str(path))), _embedding_widths(onnx.load(str(out)))
    assert (widths[1] < widths[0]) if hidden else (widths[1] == widths[0]), widths


FUSED = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[1,4,8] x) => (float[1,4,8] y)
<float[8,8] w0, float[8,24] qkv, float[24] b, float[8,8] w1>
{
  h = MatMul (x, w0)
  a = com.microsoft.Attention <num_heads=2> (h, qkv, b)
  y = MatMul (a, w1)
}
"""


ATTENTION_23 = """
<ir_version: 10, opset_import: ["" : 23]>
g (float[1,4,8] x) => (float[1,4,8] y)
<float[8,8] wq, float[8,8] wk, float[8,8] wv, float[8,8] w1>
{
  q = MatMul (x, wq)
  k = MatMul (x, wk)
  v = MatMul (x, wv)
  a = Attention <q_num_heads=2, kv_num_heads=2> (q, k, v)
  y = MatMul (a, w1)
}
"""


@pytest.mark.parametrize("text, weights", [(FUSED, ("w0",)), (ATTENTION_23, ("wq", "wk", "wv"))])
def test_fused_attention_is_frozen_with_its_name(text, weights):
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for info in list(model.graph.value_info):
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32),
                                                                    info.name))
    model.graph.ClearField("value_info")
    groups = {g.id: g for g in analyze(model).groups}
    for weight in weights:
        assert not groups[weight].prunable and "no rule for op Attention" in groups[weight].reason


def test_mac_terms_are_keyed_by_node_name():
    """Issue 12: terms are matched to nodes by name (unnamed and repeated names included), not by
    zipping a list of op types with the counter's layers."""
    from onnxprune.graph.macs import count_macs
    from onnxprune.passes.testing import model_from_text

    model = model_from_text("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,8] x) => (float[2,4] y)
<float[8,16] w1, float[16,8] w2, float[8,4] w3>
{
  a = MatMul (x, w1)
  r = Relu (a)
  b = MatMul (r, w2)
  y = MatMul (b, w3)
}
""")
    repeated = onnx.ModelProto()
    repeated.CopyFrom(model)
    repeated.graph.node[2].name = repeated.graph.node[3].name = "same"  # a repeated name gets a suffix
    terms = analyze(repeated).mac_terms
    assert [t.node for t in terms] == ["MatMul_0", "same", "same_1"]
    assert [t.macs for t in terms] == [2 * 8 * 16, 2 * 16 * 8, 2 * 8 * 4]
    analysis = analyze(model)
    assert [t.node for t in analysis.mac_terms] == ["MatMul_0", "MatMul_2", "MatMul_3"]
    assert analysis.total_macs == count_macs(model).total_macs
    plan = PruningPlan(kept={"w1": tuple(range(0, 16, 2)), "w2": (0, 1, 2, 3)})
    checked = check_exact(model, plan, analysis=analysis)
    assert checked.macs == checked.predicted_macs == 2 * 8 * 8 + 2 * 8 * 4 + 2 * 4 * 4


def test_rounding_to_runtime_friendly_counts_leaves_whole_heads_alone(bert_models):
    """--channel-multiple 8 rounds channel counts; a head is d columns already, so head groups
    round to a multiple of 1 (a 12-head layer could otherwise keep only 8 or 12 heads)."""
    from onnxprune.methods._support.threshold_masks import unit_multiple

    analysis = analyze(bert_models[1]["torchscript"], {"input_ids": (1, SEQ), "attention_mask": (1, SEQ)})
    heads, ffn = _heads(analysis), _ffn(analysis)
    assert heads and ffn
    assert {unit_multiple(g, 8) for g in heads} == {1} and {unit_multiple(g, 8) for g in ffn} == {8}
