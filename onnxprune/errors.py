"""Errors that reach the user as one line on stderr.

Every failure a user can cause (bad file, unsupported op, wrong calibration data, a missed CI
gate) is raised as an :class:`OnnxPruneError` subclass; the CLI prints ``error: <message>`` and
exits with the class's ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """A user-facing failure: the message is one line that says what to fix."""

    exit_code = 2


class ModelLoadError(OnnxPruneError):
    """The input is missing, truncated, not ONNX, or fails the checker."""


class UnsupportedModelError(OnnxPruneError):
    """The graph holds ops we cannot convert, or the import does not match onnxruntime."""


class ShapeError(OnnxPruneError):
    """A dynamic dimension needs --input-shape, or an --input-shape is malformed."""


class CalibrationError(OnnxPruneError):
    """Calibration data has the wrong names, shapes, dtypes, or non-finite values."""


class ConfigError(OnnxPruneError):
    """The configuration file is missing, is not TOML, or names an option the command lacks."""


class TrainingDivergedError(OnnxPruneError):
    """The loss became NaN or Inf; nothing is written."""

    exit_code = 4


class VerificationError(OnnxPruneError):
    """A rewritten model fails the checker or differs from its reference."""

    exit_code = 5


class GateFailedError(OnnxPruneError):
    """A CI gate (--min-fidelity, --max-latency-ms, ...) was missed."""

    exit_code = 3


class Interrupted(OnnxPruneError):
    """Ctrl-C (SIGINT): the run stops and leaves none of its outputs."""

    exit_code = 130
