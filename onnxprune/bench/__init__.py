"""Measuring models on onnxruntime: latency, throughput and memory, side by side. Torch-free."""
