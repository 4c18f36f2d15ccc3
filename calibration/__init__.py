"""Calibration data, teacher targets and losses (installed as ``onnxprune.calibration``)."""

from onnxprune.calibration.data import CalibrationSet, load_calibration, split_holdout, validate
from onnxprune.calibration.losses import LOSSES, TaskLoss, fidelity, kd_loss, output_kinds
from onnxprune.calibration.teacher import teacher_outputs

__all__ = [
    "CalibrationSet", "load_calibration", "split_holdout", "validate",
    "LOSSES", "TaskLoss", "fidelity", "kd_loss", "output_kinds", "teacher_outputs",
]
