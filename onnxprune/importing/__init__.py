"""ONNX -> torch: normalize the graph, build the torch.fx module with onnx2torch (and our converters),
and write trained weights back into the ONNX graph by name."""
