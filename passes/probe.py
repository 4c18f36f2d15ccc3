"""Read intermediate values of a model with onnxruntime (constants that passes fold into biases)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxprune.graph.sessions import make_session


def probe_values(
    model: onnx.ModelProto, names: list[str], input_shapes: dict[str, tuple[int, ...]], seeds: tuple[int, ...] = (0, 1)
) -> list[dict[str, np.ndarray]]:
    """Values ``names`` of ``model`` on one random input per seed (one dict per seed)."""
    from onnxprune.graph.shapes import graph_inputs

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {value.name for value in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = make_session(probe, threads=1, optimize=False)  # exact arithmetic: every value as written
    outputs = [value.name for value in probe.graph.output]
    results = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        feeds = {}
        for value in graph_inputs(model):
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            feeds[value.name] = rng.standard_normal(input_shapes[value.name]).astype(dtype)
        values = dict(zip(outputs, session.run(None, feeds)))
        results.append({name: values[name] for name in names})
    return results
