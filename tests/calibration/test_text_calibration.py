"""Token inputs as calibration data (onnxprune.calibration.text): an .npz of token arrays and a
text file tokenized with a tokenizers file, end to end through the prune command on a tiny
sentence encoder exported with dynamic batch and sequence axes; the sequence length reaches the
MAC count; every bad input is one error line."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from onnxprune.calibration import load_calibration
from onnxprune.calibration.data import data_input_shapes
from onnxprune.cli.main import main
from onnxprune.errors import CalibrationError
from onnxprune.graph.macs import count_macs
from onnxprune.graph.verify import run_onnxruntime
from tests.support.encoders import VOCAB
from tests.support.sentence_encoders import INPUTS, SentenceEncoder, export_sentence_encoder

FAST = ["--epochs", "2", "--batch-size", "32", "--quiet", "--lr", "1e-3"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "big", "red", "sun", "is", "hot"]
SENTENCES = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 9)) for i in range(48)]


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("encoder") / "encoder.onnx"
    onnx.save(export_sentence_encoder(SentenceEncoder()), str(path))
    return path


def _tokens(n: int = 48, seq: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (n, seq)) * mask, "attention_mask": mask,
            "token_type_ids": np.zeros((n, seq), np.int64)}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_token_npz_end_to_end(encoder_path, tmp_path):
    calib, out, report = tmp_path / "tokens.npz", tmp_path / "out.onnx", tmp_path / "run.json"
    np.savez(calib, **_tokens())
    code = main([str(encoder_path), "--method", "lagrangian", "--target-macs", "0.7", "--calib", str(calib),
                 "--out", str(out), "--report", str(report), "--holdout", "0.25", *FAST])
    assert code == 0
    pruned, original = onnx.load(str(out)), onnx.load(str(encoder_path))
    onnx.checker.check_model(pruned, full_check=True)
    run = json.loads(report.read_text())
    shapes = {name: (1, 10) for name in INPUTS}  # the npz's sequence length, with no --input-shape given
    assert run["macs"]["before"] == count_macs(original, shapes).total_macs
    assert run["macs"]["after"] < run["macs"]["before"]
    assert run["calibration"]["holdout"] == 12 and "mean_cosine" in run["pruned"]
    assert run["calibration"]["output_kinds"] == ["embedding"] and run["calibration"]["distill_terms"] == ["cosine"]
    assert run["original"]["mean_cosine"] == pytest.approx(1.0)
    assert "top1_agreement" not in run["pruned"]  # an embedding, not logits: no argmax agreement
    feeds = _tokens(4, 10, seed=5)  # the pruned model still takes dynamic batch and sequence
    assert run_onnxruntime(pruned, feeds)[0].shape == (4, 16)


def test_text_calibration_with_tokenizer(encoder_path, tokenizer_path, tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n\n", encoding="utf-8")
    original = onnx.load(str(encoder_path))
    data = load_calibration(text, original, data_input_shapes(text, original, {}, 6), tokenizer=tokenizer_path,
                            seq_len=6)
    ids, mask = data.inputs["input_ids"], data.inputs["attention_mask"]
    assert ids.shape == (48, 6) and ids.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    assert (ids[:, 0] == 2).all()  # [CLS] first; long sentences truncated to 6 tokens, short ones padded
    assert mask.sum(1).max() == 6 and mask.sum(1).min() == 5 and (ids[mask == 0] == 0).all()
    out, report = tmp_path / "out.onnx", tmp_path / "run.json"
    code = main([str(encoder_path), "--method", "lagrangian", "--target-macs", "0.7", "--calib", str(text),
                 "--tokenizer", str(tokenizer_path), "--seq-len", "12", "--out", str(out), "--report", str(report),
                 *FAST])
    assert code == 0
    run = json.loads(report.read_text())
    assert run["macs"]["before"] == count_macs(original, {name: (1, 12) for name in INPUTS}).total_macs
    assert run["macs"]["before"] != count_macs(original, {name: (1, 6) for name in INPUTS}).total_macs


def _error(capsys, args) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_text_refusals(encoder_path, tokenizer_path, tmp_path, capsys, monkeypatch):
    text = tmp_path / "s.txt"
    text.write_text("hello there\n", encoding="utf-8")
    base = [str(encoder_path), "--method", "lagrangian", "--out", str(tmp_path / "o.onnx"), "--calib", str(text)]
    assert "needs --tokenizer" in _error(capsys, base + ["--seq-len", "8"])
    assert "needs --seq-len" in _error(capsys, base + ["--tokenizer", str(tokenizer_path)])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    assert "not a tokenizers JSON file" in _error(capsys, base + ["--tokenizer", str(bad), "--seq-len", "8"])
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # the package is absent
    assert "needs the 'tokenizers' package" in _error(capsys, base + ["--tokenizer", str(tokenizer_path),
                                                                     "--seq-len", "8"])


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(attention_mask=t["attention_mask"] * 2), "attention_mask must hold only 0 and 1"),
    (lambda t: t.update(token_type_ids=t["token_type_ids"][:, :5]), "token arrays differ in shape"),
    (lambda t: t.update(input_ids=t["input_ids"] + VOCAB), f"with {VOCAB} rows"),
    (lambda t: t.update(input_ids=-t["input_ids"] - 1), "negative id"),
])
def test_token_npz_refusals(encoder_path, tmp_path, change, message):
    tokens = _tokens()
    change(tokens)
    path = tmp_path / "t.npz"
    np.savez(path, **tokens)
    original = onnx.load(str(encoder_path))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(path, original, data_input_shapes(path, original, {}))


def test_token_names_map_to_the_model_inputs(tmp_path):
    """A model whose inputs are named input_mask / segment_ids (older BERT exports) takes the
    standard keys; a model without token_type_ids just does not get it."""
    model = onnx.load_from_string(export_sentence_encoder(SentenceEncoder()).SerializeToString())
    renames = {"attention_mask": "input_mask", "token_type_ids": "segment_ids"}
    for value in model.graph.input:
        old = value.name
        if old in renames:
            value.name = renames[old]
            for node in model.graph.node:
                node.input[:] = [renames[old] if i == old else i for i in node.input]
    path = tmp_path / "t.npz"
    np.savez(path, **_tokens())
    data = load_calibration(path, model, data_input_shapes(path, model, {}))
    assert list(data.inputs) == ["input_ids", "input_mask", "segment_ids"]
    np.testing.assert_array_equal(data.inputs["input_mask"], _tokens()["attention_mask"])
