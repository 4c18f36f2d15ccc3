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
    """The model's outputs for every sample, in graph-output order, each [N, ...]."""
    session = _session(model, providers)
    first = session.get_inputs()[0].shape[0]
    if isinstance(first, int) and first > 0:  # a static batch dimension dictates the chunk size
        batch_size = first
    n = len(data)
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch_size):
        feeds = {name: array[start:start + batch_size] for name, array in data.inputs.items()}
        chunks.append(session.run(None, feeds))
    outputs = [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]
    log.info("teacher targets: %d samples, outputs %s", n, [list(o.shape) for o in outputs])
    return outputs
