"""Token batches cut to their longest real sequence (onnxprune.training.seq_trim): exact on a
masked sentence encoder with a dynamic sequence axis (outputs and gradients of the torch import
equal on the cut and the padded batch), and not done where it would not be exact: a fixed
sequence axis, a model that ignores its mask, a token-level output, no mask input."""

from __future__ import annotations

import io
import logging

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from onnxprune.cli.main import main
from onnxprune.importing.importer import import_model
from onnxprune.training.seq_trim import SequenceTrim, candidate, group_by_length, sequence_trim
from tests.support.encoders import VOCAB
from tests.support.sentence_encoders import INPUTS, SentenceEncoder, export_sentence_encoder

SEQ = 16


def _tokens(n: int = 40, seq: int = SEQ, longest: int = 9, seed: int = 0) -> list[torch.Tensor]:
    """Right-padded token inputs in graph order, real lengths 2..longest (so columns >= longest are padding)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, longest + 1, n)
    lengths[0] = longest
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, (n, seq)) * mask
    types = rng.integers(0, 2, (n, seq)) * mask
    return [torch.from_numpy(a) for a in (ids, mask, types)]


def _imported(model: onnx.ModelProto):
    return import_model(model, {value.name: (1, SEQ) for value in model.graph.input})


def _token_states(bert, input_ids, attention_mask, token_type_ids):
    """The encoder's last hidden states [B, T, D], as SentenceEncoder computes them."""
    x = bert.norm(bert.word(input_ids) + bert.position(bert.position_ids[:, : input_ids.shape[1]])
                  + bert.token_type(token_type_ids))
    bias = (1.0 - attention_mask.to(x.dtype)[:, None, None, :]) * -10000.0
    for layer in bert.layers:
        x = layer(x, bias)
    return x


class _MeanOverAll(SentenceEncoder):
    """Pools over every position, padding included: cutting the padding changes its output."""

    def forward(self, input_ids, attention_mask, token_type_ids):
        return F.normalize(_token_states(self.bert, input_ids, attention_mask, token_type_ids).mean(1), dim=1)


class _Tokens(SentenceEncoder):
    """The token embeddings [B, T, D]: an output that carries the sequence axis."""

    def forward(self, input_ids, attention_mask, token_type_ids):
        return _token_states(self.bert, input_ids, attention_mask, token_type_ids)


def _export_fixed(module) -> onnx.ModelProto:
    """Only the batch axis dynamic: the sequence length is part of the graph."""
    example = tuple(t[:2] for t in _tokens())
    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), example, buffer, input_names=list(INPUTS), output_names=["sentence"],
                      opset_version=18, dynamo=False, dynamic_axes={n: {0: "batch"} for n in INPUTS})
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_cut_batches_give_the_same_outputs_and_gradients(dynamo):
    model = export_sentence_encoder(SentenceEncoder(), dynamo=dynamo)
    imported = _imported(model)
    inputs = _tokens()
    trim = sequence_trim(model, imported.module, inputs)
    assert trim == SequenceTrim(mask=1, columns=(0, 1, 2))
    cut = trim(inputs)
    assert [tuple(x.shape) for x in cut] == [(40, 9)] * 3  # the longest real sequence is 9 of 16
    assert [tuple(x.shape) for x in trim([x[1:5] for x in inputs])] == [(4, int(inputs[1][1:5].sum(1).max()))] * 3

    module = imported.module.train()
    target = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    grads = []
    for batch in (inputs, cut):
        module.zero_grad()
        out = module(*batch)
        (1 - F.cosine_similarity(out, target)).mean().backward()
        grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
        grads[-1].insert(0, out.detach())
    (padded_out, *padded), (cut_out, *cut_grads) = grads
    torch.testing.assert_close(cut_out, padded_out, atol=1e-5, rtol=1e-4)
    assert len(padded) == len(cut_grads) > 10
    for a, b in zip(padded, cut_grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_batches_that_fill_the_sequence_are_left_alone():
    model = export_sentence_encoder(SentenceEncoder())
    inputs = _tokens(longest=SEQ)
    assert sequence_trim(model, _imported(model).module, inputs) is None  # nothing to cut on the sample
    trim = SequenceTrim(mask=1, columns=(0, 1, 2))
    assert all(a is b for a, b in zip(trim(inputs), inputs))
    left_padded = [x.flip(1) for x in _tokens()]  # padding first: no trailing padding column
    assert [tuple(x.shape) for x in trim(left_padded)] == [(40, SEQ)] * 3


@pytest.mark.parametrize("case, reason", [
    ("fixed sequence axis", "fixed sequence length"),
    ("mask not honoured", None),
    ("token-level output", None),
    ("no mask input", "no attention-mask input"),
])
def test_not_cut_where_it_would_not_be_exact(case, reason, caplog):
    if case == "fixed sequence axis":
        model = _export_fixed(SentenceEncoder())
    elif case == "mask not honoured":
        model = export_sentence_encoder(_MeanOverAll())
    elif case == "token-level output":
        model = export_sentence_encoder(_Tokens())
    else:
        model = export_sentence_encoder(SentenceEncoder())
        for value in model.graph.input:  # the same graph with its mask under a name of no token role
            if value.name == "attention_mask":
                for node in model.graph.node:
                    node.input[:] = ["weights" if i == "attention_mask" else i for i in node.input]
                value.name = "weights"
    inputs = _tokens()
    if reason is not None:
        assert isinstance(candidate(model, inputs), str) and reason in candidate(model, inputs)
    else:
        assert isinstance(candidate(model, inputs), SequenceTrim)  # the graph allows it; the check refuses
    with caplog.at_level(logging.DEBUG, logger="onnxprune.training.seq_trim"):
        assert sequence_trim(model, _imported(model).module, inputs) is None
    assert "keep their padding" in caplog.text


def test_the_prune_command_trains_on_cut_batches(tmp_path, caplog):
    model, calib, out = tmp_path / "encoder.onnx", tmp_path / "tokens.npz", tmp_path / "out.onnx"
    onnx.save(export_sentence_encoder(SentenceEncoder()), str(model))
    np.savez(calib, **dict(zip(INPUTS, (t.numpy() for t in _tokens()))))
    with caplog.at_level(logging.INFO, logger="onnxprune.training.seq_trim"):
        code = main([str(model), "--method", "lagrangian", "--target-macs", "0.7", "--calib", str(calib),
                     "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--quiet"])
    assert code == 0 and out.exists()
    assert "cut to their longest real sequence" in caplog.text and "16 -> 9 positions" in caplog.text


def test_grouped_batches_cover_the_epoch_with_less_padding():
    from onnxprune.training.loop import Replica, TrainConfig, TrainData, _batches

    inputs = _tokens(n=200, seq=64, longest=60, seed=3)
    trim = SequenceTrim(mask=1, columns=(0, 1, 2))
    lengths = trim.lengths(inputs)
    assert torch.equal(lengths, inputs[1].sum(1))  # right-padded: one past the last real token
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    grouped = group_by_length(order, lengths, 8, torch.Generator().manual_seed(1), window=5)
    assert sorted(grouped.tolist()) == list(range(200))  # every sample once
    batches = grouped.split(8)
    assert all(len(b) == 8 for b in batches)
    for b in batches:  # within a window sorted, so a batch spans a narrow band of lengths
        assert lengths[b].max() - lengths[b].min() <= 30
    data = TrainData(inputs, [torch.zeros(200, 4)], None, trim)
    replica = Replica(0, 1, torch.device("cpu"))

    def positions(config):
        seen, total = [], 0
        for batch, targets, _ in _batches(data, config, replica, epoch=0):
            assert batch[1][:, -1].any() or batch[1].shape[1] == 1  # cut right after the longest real token
            total += batch[0].numel()
            seen.append(len(targets[0]))
        assert sum(seen) == 200
        return total

    random, grouped_total = positions(TrainConfig(batch_size=8, group_by_length=False)), positions(TrainConfig(batch_size=8))
    assert grouped_total < 0.8 * random < 0.8 * 200 * 64
    assert positions(TrainConfig(batch_size=8)) == grouped_total  # the same seed groups alike


def test_holdout_outputs_by_length_equal_the_padded_ones():
    from onnxprune.run.pipeline import torch_outputs
    from onnxprune.training.seq_trim import outputs_by_length

    model = export_sentence_encoder(SentenceEncoder())
    module = _imported(model).module.eval()
    inputs = _tokens(n=50, longest=12, seed=4)
    trim = SequenceTrim(mask=1, columns=(0, 1, 2))
    with torch.no_grad():
        cut = outputs_by_length(module, [x.numpy() for x in inputs], trim, torch.device("cpu"), batch=8)
        padded = torch_outputs(module, [x.numpy() for x in inputs], torch.device("cpu"))
    assert len(cut) == len(padded) == 1 and cut[0].shape == padded[0].shape == (50, 16)
    np.testing.assert_allclose(cut[0], padded[0], atol=1e-5, rtol=1e-4)


def test_teacher_targets_on_cut_chunks_equal_the_padded_ones():
    from onnxprune.calibration.data import CalibrationSet
    from onnxprune.calibration.teacher import teacher_outputs
    from onnxprune.graph.batching import run_in_slices
    from onnxprune.graph.sessions import make_session
    from onnxprune.training.seq_trim import run_by_length

    inputs = dict(zip(INPUTS, (t.numpy() for t in _tokens(n=70, longest=11, seed=6))))
    for model, cut in ((export_sentence_encoder(SentenceEncoder()), True), (export_sentence_encoder(_MeanOverAll()), False),
                       (_export_fixed(SentenceEncoder()), False)):
        padded = run_in_slices(make_session(model), inputs)
        assert (run_by_length(make_session(model), model, inputs) is not None) == cut
        targets = teacher_outputs(model, CalibrationSet(inputs))
        np.testing.assert_allclose(targets[0], padded[0], atol=1e-5, rtol=1e-4)
