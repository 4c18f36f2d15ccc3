"""Numerical verification against onnxruntime.

Every crossing between ONNX and torch is checked the same way. For expected outputs ``e`` and
actual outputs ``a`` (same shapes) we report

    max_abs = max |e - a|
    max_rel = max_abs / max |e|          (the error relative to the output's scale)

and a pair passes :func:`assert_close` when, element-wise, ``|e - a| <= atol + rtol * |e|``
(numpy's ``allclose`` rule) with atol 1e-5 and rtol 1e-4 by default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.errors import VerificationError
from onnxprune.graph.sessions import make_session


def run_onnxruntime(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Run the model once in onnxruntime and return every graph output, in graph order."""
    return make_session(model_or_path, providers).run(None, dict(feeds))


def _as_list(arrays: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        return [arrays]
    return [np.asarray(a) for a in arrays]


def output_errors(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(max_abs, max_rel) for one output; shapes must agree."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        raise VerificationError(f"shape mismatch: expected {expected.shape}, got {actual.shape}")
    if expected.size == 0:
        return 0.0, 0.0
    if expected.dtype == np.bool_ or actual.dtype == np.bool_:
        expected, actual = expected.astype(np.int8), actual.astype(np.int8)
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    if np.isnan(diff).any():  # NaN anywhere is a failure, never silently skipped
        return float("nan"), float("nan")
    max_abs = float(diff.max())
    scale = float(np.max(np.abs(expected.astype(np.float64))))
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def max_errors(
    expected: np.ndarray | Sequence[np.ndarray], actual: np.ndarray | Sequence[np.ndarray]
) -> tuple[float, float]:
    """(max_abs, max_rel) over all outputs; see the module docstring."""
    expected, actual = _as_list(expected), _as_list(actual)
    if len(expected) != len(actual):
        raise VerificationError(f"expected {len(expected)} outputs, got {len(actual)}")
    pairs = [output_errors(e, a) for e, a in zip(expected, actual)]
    if not pairs:
        return 0.0, 0.0
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def assert_close(
    expected: np.ndarray | Sequence[np.ndarray],
    actual: np.ndarray | Sequence[np.ndarray],
    atol: float = 1e-5,
    rtol: float = 1e-4,
    what: str = "",
) -> None:
    """Raise VerificationError (one line, naming the worst output) unless all outputs are close."""
    expected, actual = _as_list(expected), _as_list(actual)
    prefix = f"{what}: " if what else ""
    if len(expected) != len(actual):
        raise VerificationError(f"{prefix}expected {len(expected)} outputs, got {len(actual)}")
    for index, (e, a) in enumerate(zip(expected, actual)):
        max_abs, max_rel = output_errors(e, a)
        close = np.allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), atol=atol, rtol=rtol)
        if not close:
            raise VerificationError(
                f"{prefix}output {index} differs: max abs error {max_abs:.3g}, max rel error {max_rel:.3g} "
                f"(atol {atol:g}, rtol {rtol:g})"
            )
