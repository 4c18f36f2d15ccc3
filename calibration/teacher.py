"""Teacher targets: the original model's outputs on the calibration set, by onnxruntime.

They are computed once per run, from the unmodified input model, and held in memory: every
epoch distils from the same targets, and the holdout's targets define fidelity.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxprune.calibration.data import CalibrationSet

log = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2**31 - 2**25


def _session(model: onnx.ModelProto, providers: list | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = providers or ["CPUExecutionProvider"]
    if model.ByteSize() < _PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    with tempfile.TemporaryDirectory(prefix="onnxprune-teacher-") as tmp:  # >2 GB: external data
        path = Path(tmp) / "teacher.onnx"
        detached = onnx.ModelProto()
        detached.CopyFrom(model)  # saving as external data rewrites the tensors in place
        onnx.save_model(detached, str(path), save_as_external_data=True, location="teacher.onnx.data")
        return ort.InferenceSession(str(path), options, providers=providers)


def teacher_outputs(
    model: onnx.ModelProto,
    data: CalibrationSet,
    batch_size: int = 256,
    providers: list | None = None,
) -> list[np.ndarray]:
    """The model's outputs for every sample, in graph-output order, each [N, ...]; calls of
    ``batch_size`` samples, or of the model's fixed batch (``onnxprune.graph.batching``)."""
    from onnxprune.graph.batching import run_in_slices

    outputs = run_in_slices(_session(model, providers), data.inputs, chunk=batch_size)
    log.info("teacher targets: %d samples, outputs %s", len(data), [list(o.shape) for o in outputs])
    return outputs
