"""Measuring models on onnxruntime: latency, throughput and memory, side by side (what `onnxprune bench`
and :func:`onnxprune.bench` report). Torch-free."""
