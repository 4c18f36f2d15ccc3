"""Sentence encoders with dynamic batch and sequence axes import: the dynamo export's attention
reshapes (Reshape-14, allowzero=1, shape computed from Shape) and the mean pooling's Clip;
GreaterOrEqual/LessOrEqual-16 (transformers' mask code). torch against onnxruntime, atol 1e-5."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest

from onnxprune.graph.verify import run_onnxruntime
from onnxprune.importing.converters.reshape import ReshapeAllowZero
from onnxprune.importing.importer import import_model, run_torch
from tests.support.encoders import VOCAB
from tests.support.sentence_encoders import INPUTS, SentenceEncoder, export_sentence_encoder


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
def test_sentence_encoder_imports_at_any_sequence_length(dynamo):
    model = export_sentence_encoder(SentenceEncoder(), dynamo=dynamo)
    if dynamo:
        assert any(n.op_type == "Reshape" and any(a.name == "allowzero" and a.i == 1 for a in n.attribute)
                   for n in model.graph.node)
    rng = np.random.default_rng(0)
    for seq in (5, 11):
        imported = import_model(model, {name: (1, seq) for name in INPUTS})
        mask = (np.arange(seq)[None] < rng.integers(1, seq + 1, (3, 1))).astype(np.int64)
        feeds = {"input_ids": rng.integers(0, VOCAB, (3, seq)), "attention_mask": mask,
                 "token_type_ids": np.zeros((3, seq), np.int64)}
        np.testing.assert_allclose(run_torch(imported, feeds)[0], run_onnxruntime(model, feeds)[0],
                                   atol=1e-5, rtol=1e-4)


def test_reshape_14_allowzero_with_a_computed_shape():
    """[B, T, H] -> [B, T, heads, d] with B, T read from Shape, as the dynamo exporter writes it
    (opset 15: Reshape is still version 14)."""
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 15]>'
                                    "g (float[B, T, 6] x) => (float[B, T, 2, 3] y) {"
                                    " s = Shape<end = 2>(x)\n tail = Constant<value = int64[2] {2, 3}>()\n"
                                    " target = Concat<axis = 0>(s, tail)\n y = Reshape<allowzero = 1>(x, target) }")
    onnx.checker.check_model(model, full_check=True)
    for batch, seq in ((1, 4), (3, 7)):
        x = np.random.default_rng(seq).standard_normal((batch, seq, 6)).astype(np.float32)
        imported = import_model(model, {"x": (batch, seq, 6)})
        assert any(isinstance(m, ReshapeAllowZero) for m in imported.module.modules())  # not onnx2torch's
        np.testing.assert_array_equal(run_torch(imported, {"x": x})[0], run_onnxruntime(model, {"x": x})[0])


def test_greater_or_equal_16():
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 16]>'
                                    "g (float[2, 3] a, float[2, 3] b) => (bool[2, 3] ge, bool[2, 3] le) {"
                                    " ge = GreaterOrEqual(a, b)\n le = LessOrEqual(a, b) }")
    onnx.checker.check_model(model, full_check=True)
    a = np.array([[0, 1, 2], [3, 4, 5]], np.float32)
    feeds = {"a": a, "b": a[:, ::-1].copy()}
    imported = import_model(model)
    for expected, actual in zip(run_onnxruntime(model, feeds), run_torch(imported, feeds)):
        np.testing.assert_array_equal(actual, expected)
