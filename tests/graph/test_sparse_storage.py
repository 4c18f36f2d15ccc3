"""Sparse initializers: the file shrinks with sparsity, the model loads and matches in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxprune.graph.sparse_storage import to_dense_storage, to_sparse_storage


def _pruned_mlp(sample_models_dir, density: float) -> onnx.ModelProto:
    model = onnx.load(sample_models_dir / "mlp.onnx")
    rng = np.random.default_rng(0)
    for i, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.ndim == 2 and array.dtype == np.float32:
            array = array * (rng.random(array.shape) < density)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def test_sparse_storage_shrinks_file_and_matches(sample_models_dir):
    x = np.load(sample_models_dir / "digits_test.npz")["image"][:64]
    sizes = {}
    for density in (0.05, 0.1):
        dense = _pruned_mlp(sample_models_dir, density)
        sparse = to_sparse_storage(dense)
        onnx.checker.check_model(sparse, full_check=True)
        stored = {n.output[0] for n in sparse.graph.node if n.op_type == "Constant"}
        assert stored == {"fc1.weight", "fc2.weight", "fc3.weight"}
        np.testing.assert_allclose(_run(sparse, x), _run(dense, x), atol=1e-5, rtol=1e-4)
        sizes[density] = (dense.ByteSize(), sparse.ByteSize())
        # round trip restores the exact tensors
        back = {t.name: numpy_helper.to_array(t) for t in to_dense_storage(sparse).graph.initializer}
        for t in dense.graph.initializer:
            np.testing.assert_array_equal(back[t.name], numpy_helper.to_array(t))
    # 12 bytes per nonzero vs 4 per element: ~3.3x smaller at 10% density, ~6.7x at 5%
    assert sizes[0.1][1] < 0.4 * sizes[0.1][0]
    assert sizes[0.05][1] < 0.6 * sizes[0.1][1]


def test_dense_tensors_stay_dense(sample_models_dir):
    model = onnx.load(sample_models_dir / "mlp.onnx")
    assert to_sparse_storage(model) == model
