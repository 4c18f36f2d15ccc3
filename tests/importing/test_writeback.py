"""write_back(): trained torch values return into the same ONNX graph by initializer name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxprune.errors import VerificationError
from onnxprune.graph.verify import assert_close, run_onnxruntime
from onnxprune.importing.importer import import_model, run_torch
from onnxprune.importing.writeback import add_run_metadata, write_back
from tests.support.models import SAMPLE_MODELS, SAMPLE_NAMES, cnn_model, text_model, transformer_block


def _initializer_bytes(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    return {i.name: (i.data_type, tuple(i.dims), numpy_helper.to_array(i).tobytes()) for i in model.graph.initializer}


def identity_shared_model() -> onnx.ModelProto:
    """TorchScript-style: one weight reached through two Identity nodes, plus a Constant bias."""
    return text_model("""
    g (float[N, 4] x, float[4, 4] W) => (float[N, 4] y) {
       [id_a] a = Identity(W)
       [id_b] b = Identity(W)
       [mm1] h1 = MatMul(x, a)
       [c] bias = Constant<value = float[4] {0.1, 0.2, 0.3, 0.4}>()
       [add] h2 = Add(h1, bias)
       [mm2] y = MatMul(h2, b)
    }""", W=np.arange(16, dtype=np.float32).reshape(4, 4) / 10)


def double_model() -> onnx.ModelProto:
    return text_model("""
    g (double[N, 3] x, double[3, 2] w, double[2] b) => (double[N, 2] y) {
       [fc] y = Gemm(x, w, b)
    }""", w=np.arange(6, dtype=np.float64).reshape(3, 2), b=np.ones(2))


MODELS = [cnn_model, transformer_block, identity_shared_model, double_model]


@pytest.mark.parametrize("build", MODELS)
def test_unchanged_import_writes_back_bit_exact(build):
    imported = import_model(build())
    written = write_back(imported)
    assert _initializer_bytes(written) == _initializer_bytes(imported.onnx_model)
    assert written.graph.node == imported.onnx_model.graph.node


@pytest.mark.parametrize("build", MODELS)
def test_perturbed_weights_written_back_match_torch(build):
    imported = import_model(build())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in imported.params:
            tensor = imported.tensor(name)
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
            if "var" in name:
                tensor.abs_()
    written = write_back(imported)
    onnx.checker.check_model(written, full_check=True)
    before = _initializer_bytes(imported.onnx_model)
    after = _initializer_bytes(written)
    assert before.keys() == after.keys()
    assert all(after[k][:2] == before[k][:2] for k in before)  # dtype and shape preserved
    assert all(after[k][2] != before[k][2] for k in imported.params)
    feeds = imported.sample_inputs(seed=5)
    assert_close(run_torch(imported, feeds), run_onnxruntime(written, feeds), what="written vs torch")


def test_write_back_refuses_a_resized_tensor():
    imported = import_model(cnn_model())
    linear = imported.module.get_submodule("fc1")
    linear.weight = torch.nn.Parameter(linear.weight[:3].detach())
    with pytest.raises(VerificationError, match="'g1w'.*shape"):
        write_back(imported)


def test_add_run_metadata_keeps_existing_and_does_not_mutate():
    model = cnn_model()
    entry = model.metadata_props.add()
    entry.key, entry.value = "producer_note", "kept"
    out = add_run_metadata(model, {"onnxprune.method": "magnitude", "onnxprune.sparsity": 0.5})
    assert [(p.key, p.value) for p in model.metadata_props] == [("producer_note", "kept")]
    assert {p.key: p.value for p in out.metadata_props} == {
        "producer_note": "kept", "onnxprune.method": "magnitude", "onnxprune.sparsity": "0.5"}
    again = add_run_metadata(out, {"onnxprune.sparsity": 0.7})
    assert [p.value for p in again.metadata_props if p.key == "onnxprune.sparsity"] == ["0.7"]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_models_import_and_round_trip(name):
    path = SAMPLE_MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not built yet")
    original = onnx.load(path)
    imported = import_model(original)
    written = write_back(imported)
    assert _initializer_bytes(written) == _initializer_bytes(imported.onnx_model)
    onnx.checker.check_model(written, full_check=True)
    feeds = {"image": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}
    reference = run_onnxruntime(original, feeds)
    assert_close(reference, run_torch(imported, feeds), what=f"{name}: torch vs onnxruntime")
    np.testing.assert_array_equal(run_onnxruntime(written, feeds)[0], reference[0])


def test_verify_helpers(tmp_path):
    from onnxprune.graph.verify import max_errors

    expected = [np.array([1.0, -4.0], np.float32), np.array([[2.0]], np.float32)]
    actual = [np.array([1.0, -4.5], np.float32), np.array([[2.0]], np.float32)]
    assert max_errors(expected, actual) == (0.5, 0.5 / 4.0)
    with pytest.raises(VerificationError) as info:
        assert_close(expected, actual, what="demo")
    assert str(info.value).startswith("demo: output 0 differs: max abs error 0.5") and "\n" not in str(info.value)
    assert_close(expected, [a + 1e-6 for a in expected])
    with pytest.raises(VerificationError, match="shape mismatch"):
        assert_close(expected[0], expected[1])
    # A model given by path, weights in an external file (how >2GB models are run).
    path = tmp_path / "m.onnx"
    onnx.save_model(double_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    x = {"x": np.ones((2, 3))}
    np.testing.assert_array_equal(run_onnxruntime(path, x)[0], run_onnxruntime(double_model(), x)[0])
