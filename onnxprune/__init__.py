"""onnxprune: ONNX model in, smaller ONNX model out.

Pipeline: import (ONNX -> normalized ONNX -> torch), calibration, a training-based
pruning method that yields a plan keyed by ONNX names, write-back of trained weights into
the original graph, graph-rewrite passes that remove the planned structures, verification.
"""

__version__ = "0.1.0"
