"""ONNX graph utilities shared by every stage: file I/O, shapes, MAC and parameter counts, names,
onnxruntime sessions and fixed-batch running, sparse storage and numerical verification."""
