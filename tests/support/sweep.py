"""One cell of the structured sweep (issue 14 item 8): a torchvision family, an exporter, a method.

Shared by ``benchmarks/structured_sweep.py --matrix`` and ``tests/passes/test_structured_sweep_fast.py``.
The model is built with random weights and measured BatchNorm statistics
(:func:`tests.support.torch_models.realistic_random_model`), exported by the TorchScript or the
dynamo exporter at a small input size, and pruned through the public API (the real pipeline:
import check, pre-training plan check, training, passes, verification against the trained torch
model) for one short epoch on random images:

- lagrangian and bernoulli to ``--target-macs 0.5``;
- lc and ltp with ``--granularity channel --sparsity 0.5`` (they have no MAC target: half the
  channels of the prunable groups).

A cell's outcome is one of ``pruned`` (a verified smaller model), ``refused`` (a clear
refusal before training: an op the importer does not convert, a plan shape the passes cannot
build, a target below the reachable floor), ``export`` (the exporter failed) or ``FAILED``
(anything after training began: a PlanError, a verification miss, a crash; the sweep's promise
is that there are none).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import torch

METHODS = {
    "lagrangian": {"target_macs": "0.5"},
    "bernoulli": {"target_macs": "0.5"},
    "lc": {"granularity": "channel", "sparsity": 0.5},
    "ltp": {"granularity": "channel", "sparsity": 0.5},
}
# refusals raised before any training (their messages say what and why); the pipeline trains
# only after the import, the calibration checks and the plan check
_BEFORE_TRAINING = ("cannot convert", "refused before training", "below the smallest model", "no prunable",
                    "no prunable channel group", "needs a structured method", "is frozen")


def exported(name: str, exporter: str, folder: Path, size: int) -> Path:
    """``name`` exported by ``exporter`` ('torchscript' or 'dynamo'), opset 17, batch 1; cached."""
    from tests.support.torch_models import export, realistic_random_model

    path = folder / f"{name}_{exporter}_{size}.onnx"
    if not path.exists():
        model = realistic_random_model(name, size)
        onnx_model = export(model, torch.randn(1, 3, size, size), exporter == "dynamo", 17)
        onnx.save(onnx_model, str(path))
    return path


def calibration(path: Path, folder: Path, samples: int, seed: int = 0) -> Path:
    """Random normal images for the model's one input, keyed by its name."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    (value,) = [v for v in model.graph.input if v.name not in initializers]
    dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim][1:]
    calib = folder / f"calib_{value.name.replace('/', '_').replace('.', '_')}_{'x'.join(map(str, dims))}_{samples}.npz"
    if not calib.exists():
        images = np.random.default_rng(seed).standard_normal((samples, *dims)).astype(np.float32)
        np.savez(calib, **{value.name: images})
    return calib


def sweep_cell(name: str, exporter: str, method: str, folder: Path, *, size: int = 64, samples: int = 48,
               epochs: int = 1, batch_size: int = 16) -> dict:
    """One cell (module docstring) as a JSON-able row."""
    from onnxprune import api
    from onnxprune.passes.plan import PlanError

    row = {"model": name, "exporter": exporter, "method": method, "size": size}
    started = time.perf_counter()
    try:
        path = exported(name, exporter, folder, size)
    except Exception as exc:  # noqa: BLE001 -- an exporter failure is a row
        row.update(outcome="export", reason=_line(exc), seconds=time.perf_counter() - started)
        return row
    calib = calibration(path, folder, samples)
    out = folder / f"{path.stem}_{method}.onnx"
    try:
        result = api.prune(path, out, method=method, calib=str(calib), epochs=epochs, batch_size=batch_size,
                           lr=1e-3, holdout=0.25, latency_seconds=0, collapse_agreement=0, **METHODS[method])
    except PlanError as exc:  # the passes refused the trained plan: after training
        row.update(outcome="FAILED", stage="after training (PlanError)", reason=_line(exc))
    except Exception as exc:  # noqa: BLE001 -- every outcome is a row
        text = _line(exc)
        before = any(marker in text for marker in _BEFORE_TRAINING)
        row.update(outcome="refused" if before else "FAILED", reason=text,
                   **({} if before else {"stage": type(exc).__name__, "where": _where(exc)}))
    else:
        macs = result.report["macs"]
        row.update(outcome="pruned" if macs["after"] < macs["before"] else "FAILED",
                   macs_frac=macs["after"] / macs["before"],
                   params_frac=result.report["params"]["after"] / max(result.report["params"]["before"], 1),
                   verified=True)  # the pipeline verified it (checker + onnxruntime vs trained torch)
        if macs["after"] >= macs["before"]:
            row["reason"] = "not smaller"
    row["seconds"] = round(time.perf_counter() - started, 1)
    for leftover in folder.glob(f"{path.stem}_{method}*.onnx*"):
        leftover.unlink()
    return row


def _line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename.split('/work/main/')[-1]}:{frames[-1].lineno}" if frames else ""
