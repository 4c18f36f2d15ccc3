"""Shared by the structured benchmarks: one prune run with the method object kept for inspection.

The steps are the pipeline's (``onnxprune.run.pipeline``): calibration, teacher outputs by
onnxruntime, import, group analysis, the shared training loop under the method, write-back,
plan application, then the checker and onnxruntime against the trained torch model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from onnxprune.calibration import TaskLoss, fidelity, load_calibration, output_kinds, split_holdout, teacher_outputs
from onnxprune.graph.batching import (
    fixed_batch,
    pad_to_multiple,
    restore_batch_constants,
    run_in_slices,
    torch_in_slices,
)
from onnxprune.graph.macs import count_macs
from onnxprune.importing.importer import import_model
from onnxprune.importing.writeback import write_back
from onnxprune.passes import apply_plan
from onnxprune.passes.groups import analyze
from onnxprune.run.pipeline import _fixed_batches
from onnxprune.training.loop import TrainConfig, TrainData, prunable_weights, train

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Setup:
    original: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]
    train_set: Any
    test_set: Any
    teacher_train: list[np.ndarray]
    teacher_test: list[np.ndarray]
    kinds: list[str]


def prepare(model: str | Path | onnx.ModelProto, calib: str, shapes: dict[str, tuple[int, ...]],
            test: str | None = None, holdout: float = 0.1, seed: int = 0) -> Setup:
    """Calibration (and a separate test set when given) with the original model's outputs."""
    original = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    data = load_calibration(calib, original, shapes, seed=seed)
    if test is None:  # a fixed-batch model's holdout is whole batches
        train_set, test_set = split_holdout(data, holdout, seed, multiple=fixed_batch(original) or 1)
    else:
        train_set, test_set = data, load_calibration(test, original, shapes, seed=seed)
    t_train, t_test = teacher_outputs(original, train_set), teacher_outputs(original, test_set)
    return Setup(original, shapes, train_set, test_set, t_train, t_test, output_kinds(t_train))


def prune(setup: Setup, method, config: TrainConfig, verify_result: bool = True, loss: str | None = None,
          temperature: float = 2.0) -> dict[str, Any]:
    """Train ``method`` (an instance) and apply its plan; returns figures and the objects."""
    started = time.perf_counter()
    imported = import_model(setup.original, setup.shapes)
    # a fixed batch as the pipeline takes it (docs/fixed-batch.md): mini-batches where the torch
    # copy allows them (after a batch-free rewrite of Reshape targets), else the fixed batch
    batch, torch_batch, imported, freed = _fixed_batches(setup.original, imported, setup.shapes)
    analysis = None if set(method.granularities) <= {"weight"} else analyze(imported.onnx_model, setup.shapes)
    labels = setup.train_set.labels
    loss_fn = TaskLoss(setup.kinds, loss, labels is not None, temperature)
    to_t = lambda arrays: [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]  # noqa: E731
    data = TrainData(to_t(setup.train_set.inputs.values()), to_t(setup.teacher_train),
                     None if labels is None else torch.from_numpy(labels))
    if torch_batch is not None:  # a constant bakes the batch in: train and evaluate at it
        *columns, label_column = pad_to_multiple([*data.inputs, *data.targets, data.labels], batch)
        data = TrainData(columns[:len(data.inputs)], columns[len(data.inputs):], label_column)
        config = dataclasses.replace(config, batch_size=batch)

    def evaluate() -> dict[str, float]:
        student = torch_outputs(imported.module, setup.test_set.inputs, torch_batch)
        return fidelity(student, setup.teacher_test, setup.kinds, setup.test_set.labels)

    ctx = train(method, imported.module, prunable_weights(imported), data, loss_fn, config,
                imported=imported, analysis=analysis, evaluate=evaluate)
    plan = method.finalize(ctx)
    imported.module.cpu().eval()  # after --device cuda: write-back and verification read it on the CPU
    pruned = apply_plan(write_back(imported), plan, setup.shapes)
    if freed:
        pruned = restore_batch_constants(pruned, freed, batch)
    ort_out = run_in_slices(pruned, setup.test_set.inputs)  # calls of the fixed batch, if any
    if verify_result:  # the pipeline's own check: the checker, onnxruntime = the trained torch model
        from onnxprune.run.pipeline import verify

        verify(pruned, imported.module, setup.test_set, fixed=torch_batch)
    scores = fidelity(ort_out, setup.teacher_test, setup.kinds, setup.test_set.labels)
    before, after = count_macs(setup.original, setup.shapes), count_macs(pruned, setup.shapes)
    return {"method": method, "ctx": ctx, "plan": plan, "pruned": pruned, "imported": imported,
            "accuracy": scores.get("accuracy"), "agreement": scores.get("top1_agreement"),
            "rel_error": scores.get("rel_error"),
            "macs": after.total_macs, "macs_frac": after.total_macs / before.total_macs,
            "params": after.total_params, "params_frac": after.total_params / before.total_params,
            "torch_batch": torch_batch, "seconds": time.perf_counter() - started}


def torch_outputs(module: torch.nn.Module, inputs: dict[str, np.ndarray], fixed: int | None = None) -> list[np.ndarray]:
    """All samples in one call, or calls of exactly ``fixed`` samples, on the module's device."""
    device = next(module.parameters(), torch.empty(0)).device
    return torch_in_slices(module, list(inputs.values()), device, batch=1 << 30, fixed=fixed)


def threads(n: int = 1) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)
