"""Calibration data: sources, validation messages, synthetic data, holdout split, teacher targets."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from onnxprune.calibration import load_calibration, split_holdout, teacher_outputs
from onnxprune.errors import CalibrationError
from onnxprune.graph.verify import run_onnxruntime
from tests.support.models import make_tiny_conv

TWO_INPUTS = """
<ir_version: 8, opset_import: ["" : 17]>
two (float[N,4] a, float[N,L] b) => (float[N,4] y) {
  s = ReduceSum <keepdims = 1> (b)
  y = Add (a, s)
}
"""


@pytest.fixture
def tiny():
    return make_tiny_conv()


def _images(n=10, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(dtype)


def test_npz_with_labels_and_float64_cast(tmp_path, tiny):
    path = tmp_path / "d.npz"
    np.savez(path, x=_images(dtype=np.float64), labels=np.arange(10) % 4)
    data = load_calibration(path, tiny)
    assert list(data.inputs) == ["x"] and data.inputs["x"].dtype == np.float32 and len(data) == 10
    assert data.labels.dtype == np.int64 and list(data.labels[:5]) == [0, 1, 2, 3, 0]


def test_npy_and_separate_labels_file(tmp_path, tiny):
    np.save(tmp_path / "x.npy", _images(6))
    np.save(tmp_path / "y.npy", np.zeros(6, np.int64))
    data = load_calibration(tmp_path / "x.npy", tiny, labels=tmp_path / "y.npy")
    assert data.inputs["x"].shape == (6, 3, 8, 8) and data.labels.shape == (6,)


def test_directory_of_samples_and_batches(tmp_path, tiny):
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "a.npy", _images(1)[0])  # one sample, no batch axis
    np.save(tmp_path / "d" / "b.npy", _images(3, seed=1))
    data = load_calibration(tmp_path / "d", tiny)
    assert data.inputs["x"].shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(data.inputs["x"][1:], _images(3, seed=1))


def test_two_input_model_dynamic_dim_from_data(tmp_path):
    model = onnx.parser.parse_model(TWO_INPUTS)
    np.savez(tmp_path / "d.npz", a=np.ones((5, 4), np.float32), b=np.ones((5, 7), np.float32))
    data = load_calibration(tmp_path / "d.npz", model)
    assert list(data.inputs) == ["a", "b"] and data.inputs["b"].shape == (5, 7)
    np.save(tmp_path / "a.npy", np.ones((5, 4), np.float32))
    with pytest.raises(CalibrationError, match=r"single-input models; this one has inputs \['a', 'b'\]"):
        load_calibration(tmp_path / "a.npy", model)
    # --input-shape fixes the dynamic axis; data that disagrees is named
    with pytest.raises(CalibrationError, match=r"input 'b' has shape \[5, 7\], expected float32 \[N,3\]"):
        load_calibration(tmp_path / "d.npz", model, {"b": (1, 3)})


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 3, 8, 9), np.float32)},
     r"calibration input 'x' has shape \[4, 3, 8, 9\], expected float32 \[N,3,8,8\]"),
    ({"x": np.zeros((4, 3, 8, 8), np.int64)}, r"calibration input 'x' has dtype int64, expected float32"),
    ({"x": np.zeros((0, 3, 8, 8), np.float32)}, r"calibration input 'x' is empty \(shape \[0, 3, 8, 8\]\)"),
    ({"x": np.full((4, 3, 8, 8), np.nan, np.float32)}, r"calibration input 'x' holds 768 NaN/Inf values"),
    ({"x": _images(4), "image": _images(4)}, r"has input 'image', but the model's inputs are \['x'\]"),
    ({"image": _images(4)}, r"has input 'image', but the model's inputs are \['x'\]"),
    ({"x": _images(4), "labels": np.zeros(3, np.int64)}, r"labels: expected integer class ids of shape \[4\]"),
])
def test_bad_data_is_one_clear_line(tmp_path, tiny, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationError, match=message) as info:
        load_calibration(path, tiny)
    assert "\n" not in str(info.value)


def test_missing_source_and_files(tmp_path, tiny):
    with pytest.raises(CalibrationError, match=r"no calibration data: pass --calib data.npz"):
        load_calibration(None, tiny)
    with pytest.raises(CalibrationError, match=r"no such file or directory"):
        load_calibration(tmp_path / "nope.npz", tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match=r"directory holds no .npy or .npz files"):
        load_calibration(tmp_path / "empty", tiny)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match=r"cannot read as .npz"):
        load_calibration(tmp_path / "junk.npz", tiny)


def test_synthetic_warns_and_follows_shapes(tiny, caplog):
    with caplog.at_level(logging.WARNING):
        data = load_calibration("synthetic", tiny, seed=3)
    assert "only serve smoke tests" in caplog.text and data.synthetic and data.labels is None
    assert data.inputs["x"].shape == (64, 3, 8, 8) and data.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(data.inputs["x"], load_calibration("synthetic", tiny, seed=3).inputs["x"])
    model = onnx.parser.parse_model(TWO_INPUTS)
    with pytest.raises(CalibrationError, match=r"dynamic dimension 'L' at axis 1; pass --input-shape b="):
        load_calibration("synthetic", model)
    assert load_calibration("synthetic", model, {"b": (2, 5)}).inputs["b"].shape == (64, 5)


def test_holdout_split_is_seeded_disjoint_and_complete(tmp_path, tiny):
    n = 50
    images = _images(n)
    images[:, 0, 0, 0] = np.arange(n)  # tag each sample
    np.savez(tmp_path / "d.npz", x=images, labels=np.arange(n))
    data = load_calibration(tmp_path / "d.npz", tiny)
    train, hold = split_holdout(data, 0.1, seed=0)
    assert (len(train), len(hold)) == (45, 5)
    tags = set(train.labels) | set(hold.labels)
    assert tags == set(range(n)) and not set(train.labels) & set(hold.labels)
    np.testing.assert_array_equal(train.inputs["x"][:, 0, 0, 0], train.labels)  # inputs follow labels
    assert list(split_holdout(data, 0.1, seed=0)[1].labels) == list(hold.labels)
    assert list(split_holdout(data, 0.1, seed=1)[1].labels) != list(hold.labels)
    assert split_holdout(data, 0.0)[1] is None
    with pytest.raises(CalibrationError, match=r"too few to hold out"):
        split_holdout(data.subset(np.arange(1)), 0.5)


def test_teacher_outputs_match_onnxruntime_in_any_batching(tiny):
    data = load_calibration("synthetic", tiny)
    whole = run_onnxruntime(tiny, data.inputs)[0]
    for batch in (7, 64, 1000):
        np.testing.assert_array_equal(teacher_outputs(tiny, data, batch_size=batch)[0], whole)


def test_teacher_of_a_model_over_the_protobuf_limit_goes_through_external_data(tiny, monkeypatch):
    import onnxprune.graph.sessions as sessions

    data = load_calibration("synthetic", tiny)
    expected = teacher_outputs(tiny, data)[0]
    monkeypatch.setattr(sessions, "PROTO_LIMIT", 10)  # every model counts as "over 2 GB" (the one rule)
    np.testing.assert_array_equal(teacher_outputs(tiny, data)[0], expected)
    assert all(init.raw_data for init in tiny.graph.initializer)  # the caller's model is untouched
