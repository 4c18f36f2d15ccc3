"""Distillation of embedding outputs (onnxprune.calibration.losses): which outputs count as
embeddings (unit-norm rows; in a token model, not computed by a linear layer), the term each
kind gets under --distill-loss auto and its overrides, the cosine term's value, mean_cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnxprune.calibration import TaskLoss, fidelity, output_kinds, teacher_outputs
from onnxprune.calibration.data import CalibrationSet
from onnxprune.calibration.losses import cosine_loss, kd_loss
from onnxprune.errors import CalibrationError
from tests.support.encoders import VOCAB, export_bert, tiny_bert
from tests.support.sentence_encoders import SentenceEncoder, export_sentence_encoder


def _feeds(n: int = 6, seq: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, VOCAB, (n, seq)), "attention_mask": np.ones((n, seq), np.int64),
            "token_type_ids": np.zeros((n, seq), np.int64)}


def test_kinds_from_values_alone():
    rng = np.random.default_rng(0)
    unit = rng.standard_normal((5, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    kinds = output_kinds([unit.astype(np.float32), rng.standard_normal((5, 8)).astype(np.float32),
                          rng.standard_normal((5, 3, 8)).astype(np.float32)])
    assert kinds == ["embedding", "logits", "dense"]  # without the model, a [N, T, D] output stays dense
    confident = np.full((5, 8), 1e-5, np.float32)
    confident[:, 0] = 1 - 7e-5  # softmax rows near one-hot have norm ~1 too: still logits
    assert output_kinds([confident]) == ["logits"]


@pytest.mark.parametrize("normalize", [True, False])
def test_sentence_encoder_output_is_an_embedding(normalize):
    """Normalized or not, a pooled output of a model that takes token ids and does not end in a
    linear layer is an embedding: cosine under auto."""
    model = export_sentence_encoder(SentenceEncoder(normalize=normalize))
    targets = teacher_outputs(model, CalibrationSet(_feeds()))
    kinds = output_kinds(targets, model)
    assert kinds == ["embedding"]
    assert TaskLoss(kinds).terms == ["cosine"]


def test_token_model_with_a_classifier_has_logits():
    model = export_bert(tiny_bert(), dynamo=False)
    feeds = {k: v for k, v in _feeds(seq=8).items() if k != "token_type_ids"}
    targets = teacher_outputs(model, CalibrationSet(feeds))
    assert output_kinds(targets, model) == ["logits"]  # Gemm/MatMul+Add on the first token


def test_token_embeddings_and_overrides():
    kinds = ["logits", "embedding", "token_embedding", "dense"]
    assert TaskLoss(kinds).terms == ["kl", "cosine", "mse", "mse"]
    assert TaskLoss(kinds, distill="kl").terms == ["kl", "kl", "mse", "mse"]
    assert TaskLoss(kinds, distill="mse").terms == ["mse", "mse", "mse", "mse"]
    assert TaskLoss(kinds, distill="cosine").terms == ["cosine", "cosine", "cosine", "mse"]
    with pytest.raises(CalibrationError, match="--distill-loss 'l1'"):
        TaskLoss(kinds, distill="l1")


def test_losses_sum_the_chosen_terms():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(6, 5, generator=g), F.normalize(torch.randn(6, 8, generator=g), dim=1)]
    t = [torch.randn(6, 5, generator=g), F.normalize(torch.randn(6, 8, generator=g), dim=1)]
    kinds = ["logits", "embedding"]
    cos = (1 - (s[1] * t[1]).sum(1)).mean()
    assert torch.allclose(cosine_loss(s[1], t[1]), cos, atol=1e-6)
    assert torch.allclose(TaskLoss(kinds)(s, t), kd_loss(s[0], t[0], 2.0) + cos, atol=1e-6)
    # for unit vectors 1 - cos = |s - t|^2 / 2: D/2 times the MSE over components
    assert torch.allclose(cos, F.mse_loss(s[1], t[1]) * 8 / 2, atol=1e-6)
    assert torch.allclose(TaskLoss(kinds, distill="mse")(s, t), F.mse_loss(s[0], t[0]) + F.mse_loss(s[1], t[1]))
    assert cosine_loss(t[1] * 3.0, t[1]).abs() < 1e-6  # the scale does not matter, the direction does


def test_fidelity_reports_mean_cosine():
    teacher = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    student = [np.array([[1.0, 1.0], [0.0, 2.0]])]
    f = fidelity(student, teacher, ["embedding"])
    assert f["mean_cosine"] == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)
    assert "top1_agreement" not in f
