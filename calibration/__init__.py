"""Calibration data, teacher targets and losses (installed as ``onnxprune.calibration``).

The names below are imported on first use (PEP 562), not when the package is: ``losses`` needs
torch, and ``onnxprune bench`` imports ``onnxprune.calibration.images`` on a target device that
has no torch (docs/target-install.md).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CalibrationSet": "data", "load_calibration": "data", "split_holdout": "data", "validate": "data",
    "LOSSES": "losses", "TaskLoss": "losses", "fidelity": "losses", "kd_loss": "losses",
    "output_kinds": "losses",
    "teacher_outputs": "teacher",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
