"""The learning-rate probe (onnxprune.training.lr_probe): it rejects a rate that destroys a trained
network, the rejection agrees with what that rate does to a real fine-tune, and a probed run is
the run at the probed rate. (On the real pretrained MobileNetV2 of benchmarks/real it rejects
1e-3 and 3e-4: tests/test_real_data.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from onnxprune.calibration import TaskLoss, output_kinds, teacher_outputs
from onnxprune.importing.importer import import_model
from onnxprune.methods.base import PruningMethod
from onnxprune.training.loop import TrainConfig, TrainData, _optimizer, _set_train_mode, prunable_weights, train
from onnxprune.training.lr_probe import probe_lr
from tests.support.structured import SAMPLES, SHAPES, digits


def _digits_mlp():
    original = onnx.load(str(SAMPLES / "mlp.onnx"))
    train_set = digits("train")
    teacher = teacher_outputs(original, train_set)
    data = TrainData([torch.from_numpy(train_set.inputs["image"])], [torch.from_numpy(teacher[0])])
    return original, data, TaskLoss(output_kinds(teacher))


def _agreement_after_one_epoch(original, data, loss, lr: float) -> float:
    """Fine-tune the unpruned model on its own outputs for one epoch at ``lr``: agreement with itself."""
    imported = import_model(original, SHAPES)
    train(PruningMethod(), imported.module, prunable_weights(imported), data, loss,
          TrainConfig(epochs=1, batch_size=64, lr=lr, quiet=True))
    x = digits("test").inputs["image"]
    with torch.no_grad():
        student = imported.module(torch.from_numpy(x)).numpy()
    reference = teacher_outputs(original, digits("test"))[0]
    return float((student.argmax(1) == reference.argmax(1)).mean())


def test_probe_rejects_the_rate_that_destroys_a_trained_network():
    original, data, loss = _digits_mlp()
    module = import_model(original, SHAPES).module
    result = probe_lr(module, data.inputs, data.targets, loss, lambda m, lr: _optimizer(TrainConfig(lr=lr), m, []),
                      lambda m: _set_train_mode(m, True), 64, 0, torch.device("cpu"), grid=(1.0, 0.1, 1e-3))
    assert [t["accepted"] for t in result.trials] == [False, False, True], result.summary()
    assert result.lr == 1e-3
    assert result.trials[1]["fraction"] > 0.3  # lr 0.1 went more than a third of the way to a constant output
    # the probe's 10 steps judge the rates as a whole epoch of fine-tuning does
    assert _agreement_after_one_epoch(original, data, loss, 0.1) < 0.8  # measured 0.67
    assert _agreement_after_one_epoch(original, data, loss, 1e-3) > 0.95


def test_probed_run_is_the_run_at_the_probed_rate():
    original, data, loss = _digits_mlp()
    runs = []
    for lr in (None, 1e-3):
        imported = import_model(original, SHAPES)
        ctx = train(PruningMethod(), imported.module, prunable_weights(imported), data, loss,
                    TrainConfig(epochs=1, batch_size=64, lr=lr, quiet=True))
        runs.append((ctx, [p.detach().clone() for p in imported.module.parameters()]))
    (probed, weights), (given, same) = runs
    assert probed.lr == 1e-3 and probed.lr_probe["lr"] == 1e-3 and given.lr_probe is None
    assert probed.lr_probe["trials"][0]["accepted"] and 0 <= probed.lr_probe["trials"][0]["fraction"] <= 0.05
    assert all(torch.equal(a, b) for a, b in zip(weights, same))  # the probe left no trace: same RNG, same model
    assert not np.isnan(probed.lr_probe["start_loss"])
