"""Run a structured method on a digits sample model and keep the method object (shared by
test_lagrangian.py and test_bernoulli.py; the benchmarks use benchmarks/structured_harness.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxprune.calibration import TaskLoss, output_kinds, teacher_outputs
from onnxprune.calibration.data import CalibrationSet
from onnxprune.graph.macs import count_macs
from onnxprune.graph.verify import assert_close, run_onnxruntime
from onnxprune.importing.importer import import_model
from onnxprune.importing.writeback import write_back
from onnxprune.passes import apply_plan
from onnxprune.passes.groups import analyze
from onnxprune.training.loop import TrainConfig, TrainData, prunable_weights, train

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
SHAPES = {"image": (1, 1, 8, 8)}


@functools.lru_cache(maxsize=None)
def digits(split: str, n: int | None = None) -> CalibrationSet:
    data = np.load(SAMPLES / f"digits_{split}.npz")
    return CalibrationSet({"image": data["image"][:n]}, data["labels"][:n])


def run(name: str, method, epochs: int, lr: float = 1e-3, seed: int = 0, n_train: int | None = None,
        original: onnx.ModelProto | None = None) -> dict:
    """Train ``method`` on the digits training split, apply its plan, check the result."""
    original = original or onnx.load(str(SAMPLES / f"{name}.onnx"))
    train_set, test_set = digits("train", n_train), digits("test")
    teacher = teacher_outputs(original, train_set)
    imported = import_model(original, SHAPES)
    analysis = analyze(imported.onnx_model, SHAPES)
    data = TrainData([torch.from_numpy(train_set.inputs["image"])], [torch.from_numpy(teacher[0])])
    config = TrainConfig(epochs=epochs, batch_size=64, lr=lr, seed=seed, quiet=True)
    ctx = train(method, imported.module, prunable_weights(imported), data, TaskLoss(output_kinds(teacher)),
                config, imported=imported, analysis=analysis)
    plan = method.finalize(ctx)
    imported.module.eval()
    pruned = apply_plan(write_back(imported), plan, SHAPES)
    onnx.checker.check_model(pruned, full_check=True)
    x = test_set.inputs["image"]
    with torch.no_grad():
        gated = imported.module(torch.from_numpy(x)).numpy()
    logits = run_onnxruntime(pruned, {"image": x})[0]
    assert_close(gated, logits, what="pruned onnx vs gated torch model")
    return {"ctx": ctx, "plan": plan, "pruned": pruned, "analysis": analysis,
            "accuracy": float((logits.argmax(1) == test_set.labels).mean()),
            "macs": count_macs(pruned, SHAPES).total_macs, "macs0": count_macs(original, SHAPES).total_macs}
