"""Teacher targets: the original model's outputs on the calibration set, by onnxruntime.

They are computed once per run, from the unmodified input model, and held in memory: every
epoch distils from the same targets, and the holdout's targets define fidelity. Token inputs
with an attention mask are run cut to their real length where that provably gives the same
outputs (:func:`onnxprune.training.seq_trim.run_by_length`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from onnxprune.calibration.data import CalibrationSet
from onnxprune.graph.batching import _session_batch, run_in_slices
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
    session = make_session(model, providers)
    outputs = None
    if isinstance(model, onnx.ModelProto) and _session_batch(session) is None:  # token inputs: real lengths only
        from onnxprune.training.seq_trim import run_by_length

        outputs = run_by_length(session, model, data.inputs)
    if outputs is None:
        outputs = run_in_slices(session, data.inputs, chunk=batch_size)
    log.info("teacher targets: %d samples, outputs %s", len(data), [list(o.shape) for o in outputs])
    return outputs
