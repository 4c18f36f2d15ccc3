"""Teacher targets: the original model's outputs on the calibration set, by onnxruntime.

They are computed once per run, from the unmodified input model, and held in memory: every
epoch distils from the same targets, and the holdout's targets define fidelity.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from onnxprune.calibration.data import CalibrationSet
from onnxprune.graph.batching import run_in_slices
from onnxprune.graph.sessions import make_session

log = logging.getLogger(__name__)

def teacher_outputs(
    model: onnx.ModelProto | str | os.PathLike,
    data: CalibrationSet,
    batch_size: int = 256,
    providers: list | None = None,
) -> list[np.ndarray]:
    """The model's outputs for every sample, in graph-output order, each [N, ...]; calls of
    ``batch_size`` samples, or of the model's fixed batch (``onnxprune.graph.batching``).
    ``model`` may be the model's file: onnxruntime then reads it (and its external data) itself,
    with no serialized copy of the weights in this process."""
    outputs = run_in_slices(make_session(model, providers), data.inputs, chunk=batch_size)
    log.info("teacher targets: %d samples, outputs %s", len(data), [list(o.shape) for o in outputs])
    return outputs
