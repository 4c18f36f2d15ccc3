"""Distillation and label losses, output kinds, fidelity metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onnxprune.calibration import TaskLoss, fidelity, kd_loss, output_kinds
from onnxprune.errors import CalibrationError


def test_output_kinds():
    kinds = output_kinds([np.zeros((4, 10), np.float32), np.zeros((4, 1), np.float32),
                          np.zeros((4, 3, 2), np.float32), np.zeros((4, 5), np.int64)])
    assert kinds == ["logits", "dense", "dense", "dense"]


def test_kd_loss_is_t_squared_kl():
    s, t = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.randn(6, 5)
    temperature = 3.0
    p = torch.softmax(t / temperature, 1)
    manual = (p * (p.log() - torch.log_softmax(s / temperature, 1))).sum(1).mean() * temperature ** 2
    assert torch.allclose(kd_loss(s, t, temperature), manual, atol=1e-6)
    assert kd_loss(t, t, temperature).abs() < 1e-6
    assert kd_loss(t + 5.0, t, temperature).abs() < 1e-5  # softmax is shift-invariant


def test_task_loss_modes_sum_over_outputs():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(8, 4, generator=g), torch.randn(8, 3, 2, generator=g)]
    t = [torch.randn(8, 4, generator=g), torch.randn(8, 3, 2, generator=g)]
    y = torch.randint(0, 4, (8,), generator=g)
    kinds = ["logits", "dense"]
    kd = kd_loss(s[0], t[0], 2.0) + torch.nn.functional.mse_loss(s[1], t[1])
    ce = torch.nn.functional.cross_entropy(s[0], y)
    assert torch.allclose(TaskLoss(kinds)(s, t), kd)
    assert torch.allclose(TaskLoss(kinds, has_labels=True)(s, t, y), kd + ce)  # default with labels
    assert torch.allclose(TaskLoss(kinds, "kd", has_labels=True)(s, t, y), kd)
    assert torch.allclose(TaskLoss(kinds, "ce", has_labels=True)(s, t, y), ce)
    mse = sum(torch.nn.functional.mse_loss(a, b) for a, b in zip(s, t))
    assert torch.allclose(TaskLoss(kinds, "mse")(s, t), mse)


def test_task_loss_refuses_what_it_cannot_compute():
    with pytest.raises(CalibrationError, match=r"--loss ce needs labels"):
        TaskLoss(["logits"], "ce")
    with pytest.raises(CalibrationError, match=r"--loss kd\+ce: the model has no \[N, C\] logits output"):
        TaskLoss(["dense"], "kd+ce", has_labels=True)
    with pytest.raises(CalibrationError, match=r"--loss 'l1'"):
        TaskLoss(["logits"], "l1")


def test_fidelity_metrics():
    teacher = [np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])]
    student = [np.array([[2.0, 1.5], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])]
    labels = np.array([0, 1, 1, 1])
    f = fidelity(student, teacher, ["logits"], labels)
    assert f["top1_agreement"] == 0.75 and f["accuracy"] == 0.5 and f["max_abs_error"] == 3.0
    assert math.isclose(f["rel_error"], math.sqrt((0.25 + 1 + 9) / (4 + 1 + 9 + 1 + 1)))
    assert fidelity(teacher, teacher, ["logits"], labels)["top1_agreement"] == 1.0
