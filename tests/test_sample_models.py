"""The bundled sample models and digits data: contract, accuracy, import/write-back round trip.

Every sample model has one input ``image`` float32 [N,1,8,8] (N symbolic) and one output
``logits`` float32 [N,10], embeds its weights, passes the full checker, and scores >= 95% on the
held-out digits under onnxruntime. The round trip is the invariant the pruning pipeline rests on:

    ort(original) == torch(import_model(original)) == ort(write_back(import)), nothing pruned,

each within atol 1e-5 / rtol 1e-4, on real held-out images.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.support.models import REPO, SAMPLE_MODELS, SAMPLE_NAMES

ATOL, RTOL = 1e-5, 1e-4
ROUND_TRIP_BATCH = 32


def load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(SAMPLE_MODELS / name) as data:
        return {key: data[key] for key in data.files}


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def test_set() -> dict[str, np.ndarray]:
    return load_npz("digits_test.npz")


# ----------------------------------------------------------------------------- data


def test_digits_files_hold_the_seeded_stratified_split():
    full, train, test, split = (load_npz(f) for f in ("digits.npz", "digits_train.npz", "digits_test.npz", "digits_split.npz"))
    assert full["image"].shape == (1797, 1, 8, 8) and full["image"].dtype == np.float32
    assert full["labels"].shape == (1797,) and full["labels"].dtype == np.int64
    assert full["image"].min() == 0.0 and full["image"].max() == 1.0
    assert set(np.unique(full["labels"])) == set(range(10))

    train_idx, test_idx = split["train_idx"], split["test_idx"]
    assert len(test_idx) == 360 and len(train_idx) == 1437
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(1797))
    for part, idx in ((train, train_idx), (test, test_idx)):
        assert set(part) == {"image", "labels"}
        np.testing.assert_array_equal(part["image"], full["image"][idx])
        np.testing.assert_array_equal(part["labels"], full["labels"][idx])
    # stratified: every class keeps its share of the test set within one image
    full_counts = np.bincount(full["labels"], minlength=10)
    test_counts = np.bincount(test["labels"], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * full_counts) <= 1)


def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = load_npz("digits.npz")
    np.testing.assert_array_equal(full["image"][:, 0], (bunch.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(full["labels"], bunch.target)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_model_contract(name):
    path = SAMPLE_MODELS / f"{name}.onnx"
    model = onnx.load(path, load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    inits = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    assert [v.name for v in inputs] == ["image"]
    assert [v.name for v in model.graph.output] == ["logits"]
    assert inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims, out_dims = dims(inputs[0]), dims(model.graph.output[0])
    assert isinstance(in_dims[0], str) and in_dims[0], "batch dim must be symbolic"
    assert in_dims[1:] == [1, 8, 8]
    assert out_dims == [in_dims[0], 10]
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert model.doc_string and model.producer_name
    assert {p.key for p in model.metadata_props} >= {"source", "dataset", "seed"}

    # the dynamic batch really works: two batch sizes, one row each the same answer
    x = load_npz("digits_test.npz")["image"][:5]
    sess = session(path)
    (five,) = sess.run(["logits"], {"image": x})
    (one,) = sess.run(["logits"], {"image": x[:1]})
    assert five.shape == (5, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one, five[:1], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    ("name", "required"),
    [
        ("mlp", {"Gemm", "Relu"}),
        ("resnet", {"Conv", "BatchNormalization", "Add", "Relu", "Gemm"}),
        ("mobilenet", {"Conv", "BatchNormalization", "Clip", "Sigmoid", "Mul", "Add"}),
        ("vgg", {"Conv", "BatchNormalization", "MaxPool", "Reshape", "Gemm"}),
        ("transformer", {"MatMul", "Softmax", "LayerNormalization", "Gelu", "Transpose"}),
    ],
)
def test_sample_model_structure(name, required):
    """The structures each model exists to exercise are present in the graph."""
    model = onnx.load(SAMPLE_MODELS / f"{name}.onnx")
    ops = {node.op_type for node in model.graph.node}
    assert required <= ops, f"{name} lacks {sorted(required - ops)}"
    if name == "mobilenet":
        depthwise = [
            n for n in model.graph.node
            if n.op_type == "Conv" and next((a.i for a in n.attribute if a.name == "group"), 1) > 1
        ]
        assert depthwise, "mobilenet has no depthwise Conv"
    if name == "resnet":
        assert sum(n.op_type == "Add" for n in model.graph.node) == 6  # 6 residual blocks
    if name == "transformer":
        assert not ops & {"Attention", "MultiHeadAttention"}


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_model_held_out_accuracy(name, test_set):
    (logits,) = session(SAMPLE_MODELS / f"{name}.onnx").run(["logits"], {"image": test_set["image"]})
    accuracy = float((logits.argmax(axis=1) == test_set["labels"]).mean())
    assert accuracy >= 0.95, f"{name}: held-out accuracy {accuracy:.4f}"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_model_round_trip(name, test_set):
    """ort(original) == torch(import) == ort(write_back(import)) with nothing pruned."""
    from onnxprune.importing.importer import import_model
    from onnxprune.importing.writeback import write_back

    original = onnx.load(SAMPLE_MODELS / f"{name}.onnx")
    x = test_set["image"][:ROUND_TRIP_BATCH]
    (expected,) = session(original).run(["logits"], {"image": x})

    imported = import_model(original, {"image": x.shape})
    assert imported.input_names == ("image",) and imported.output_names == ("logits",)
    imported.module.eval()
    with torch.no_grad():
        torch_out = imported.module(torch.from_numpy(x))
    np.testing.assert_allclose(torch_out.numpy(), expected, atol=ATOL, rtol=RTOL)

    written = write_back(imported)
    onnx.checker.check_model(written, full_check=True)
    assert [v.name for v in written.graph.output] == ["logits"]
    (rewritten,) = session(written).run(["logits"], {"image": x})
    np.testing.assert_allclose(rewritten, expected, atol=ATOL, rtol=RTOL)
    # nothing trained: every mapped initializer is written back unchanged
    before = {i.name: onnx.numpy_helper.to_array(i) for i in imported.onnx_model.graph.initializer}
    for init in written.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), before[init.name])


@pytest.mark.slow
def test_build_script_rebuilds_the_mlp(tmp_path, test_set):
    """The committed script rebuilds the MLP and the data files: same graph, same data bytes,
    held-out accuracy >= 95%. (On one platform the weights are bit-identical too; another CPU's
    float kernels may move the last bits over 100 epochs, so the weights are not compared.)"""
    subprocess.run(
        [sys.executable, str(REPO / "sample_models" / "build.py"), "--out", str(tmp_path), "--models", "mlp"],
        check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    rebuilt, committed = onnx.load(tmp_path / "mlp.onnx"), onnx.load(SAMPLE_MODELS / "mlp.onnx")
    assert [n.op_type for n in rebuilt.graph.node] == [n.op_type for n in committed.graph.node]
    shapes = {i.name: tuple(i.dims) for i in committed.graph.initializer}
    assert {i.name: tuple(i.dims) for i in rebuilt.graph.initializer} == shapes
    (logits,) = session(rebuilt).run(["logits"], {"image": test_set["image"]})
    assert (logits.argmax(axis=1) == test_set["labels"]).mean() >= 0.95
    # same arrays (the zip container's header bytes vary with numpy's zip64 choice)
    for data in ("digits.npz", "digits_train.npz", "digits_test.npz", "digits_split.npz"):
        with np.load(tmp_path / data) as new, np.load(SAMPLE_MODELS / data) as old:
            assert sorted(new.files) == sorted(old.files)
            for key in old.files:
                assert new[key].dtype == old[key].dtype
                np.testing.assert_array_equal(new[key], old[key])
