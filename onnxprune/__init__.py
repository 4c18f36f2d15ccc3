"""onnxprune: ONNX model in, smaller ONNX model out.

Pipeline: import (ONNX -> normalized ONNX -> torch), calibration, a training-based
pruning method that yields a plan keyed by ONNX names, write-back of trained weights into
the original graph, graph-rewrite passes that remove the planned structures, verification.

The Python API (:mod:`onnxprune.api`): :func:`prune`, :func:`apply`, :func:`inspect`, :func:`bench`.
"""

__version__ = "0.1.0"

from onnxprune.api import ApplyResult, PruneResult, apply, bench, inspect, prune  # noqa: E402

__all__ = ["ApplyResult", "PruneResult", "__version__", "apply", "bench", "inspect", "prune"]
