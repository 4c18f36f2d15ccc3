"""Image-folder calibration on real PNG/JPEG files written with torchvision's encoders."""

from __future__ import annotations

import logging

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_digits
from torchvision.io import encode_jpeg, encode_png

from onnxprune.calibration.images import (
    class_names,
    is_image_folder,
    load_image_folder,
    resolve_layout,
)
from onnxprune.cli.shared_options import image_options
from onnxprune.errors import CalibrationError

# the test images are written with torchvision's encoders, deprecated (still working) in 0.29
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def _write_png(path, hwc: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))).numpy().tobytes())


def _write_jpeg(path, hwc: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_jpeg(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))), quality=95)
    path.write_bytes(data.numpy().tobytes())


def _digit_images(count: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits (0..16) as uint8 RGB images, upscaled 8x8 -> size x size by repetition."""
    digits = load_digits()
    gray = (digits.images[:count] * (255 / 16)).round().astype(np.uint8)
    factor = size // 8
    gray = gray.repeat(factor, axis=1).repeat(factor, axis=2)
    return np.repeat(gray[..., None], 3, axis=3), digits.target[:count]


def test_flat_png_folder_decodes_exactly(tmp_path):
    images, _ = _digit_images(5)
    for i, image in enumerate(images):
        _write_png(tmp_path / f"img{i}.png", image)
    (tmp_path / "notes.txt").write_text("not an image")

    array, labels, skipped = load_image_folder(tmp_path, (1, 1, 16, 16))

    assert array.shape == (5, 1, 16, 16) and array.dtype == np.float32
    assert labels is None and skipped == []
    # PNG is lossless and the size matches: gray RGB -> luma gives back the pixel values
    np.testing.assert_allclose(array[:, 0], images[..., 0] / 255.0, atol=1.01 / 255)


def test_class_folders_give_labels_and_corrupt_files_are_skipped(tmp_path, caplog):
    images, _ = _digit_images(6)
    for i, image in enumerate(images):
        _write_png(tmp_path / ("zebra" if i % 2 else "ant") / f"{i}.png", image)
    (tmp_path / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (tmp_path / "zebra" / "empty.jpg").write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="onnxprune.calibration.images"):
        array, labels, skipped = load_image_folder(tmp_path, (1, 3, 16, 16))

    assert class_names(tmp_path) == ["ant", "zebra"]
    assert sorted(skipped) == ["ant/broken.png", "zebra/empty.jpg"]
    assert "ant/broken.png" in caplog.text and "2 of 8 images skipped" in caplog.text
    assert array.shape == (6, 3, 16, 16)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1]  # ant=0, zebra=1


def test_resize_covers_then_center_crops(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 20:] = 255  # left half black, right half white
    _write_png(tmp_path / "wide.png", image)

    array, _, _ = load_image_folder(tmp_path, (1, 3, 10, 10))

    # 20x40 scaled by 0.5 -> 10x20, center crop keeps columns 5..14: 5 black then 5 white
    assert array.shape == (1, 3, 10, 10)
    np.testing.assert_allclose(array[0, :, :, :4], 0.0, atol=1e-6)
    np.testing.assert_allclose(array[0, :, :, 6:], 1.0, atol=1e-6)


def test_mean_std_channel_order_and_layout(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 102  # R, G, B
    _write_png(tmp_path / "a.png", image)
    mean, std = [0.5, 0.25, 0.1], [0.5, 0.25, 0.2]

    rgb, _, _ = load_image_folder(tmp_path, (1, 3, 8, 8), mean, std, "rgb", "nchw")
    bgr, _, _ = load_image_folder(tmp_path, (1, 8, 8, 3), mean, std, "bgr", "auto")

    expected_rgb = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (0.4 - 0.1) / 0.2]
    np.testing.assert_allclose(rgb[0, :, 3, 3], expected_rgb, atol=1e-6)
    assert bgr.shape == (1, 8, 8, 3)
    expected_bgr = [(0.4 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (1.0 - 0.1) / 0.2]
    np.testing.assert_allclose(bgr[0, 3, 3, :], expected_bgr, atol=1e-6)


def test_rgb_image_for_a_one_channel_model_becomes_luma(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50
    _write_png(tmp_path / "a.png", image)

    array, _, _ = load_image_folder(tmp_path, (1, 1, 8, 8))

    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert array.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(array[0, 0], luma, atol=1.5 / 255)


def test_jpeg_files_are_read(tmp_path):
    images, _ = _digit_images(3, size=32)
    for i, image in enumerate(images):
        _write_jpeg(tmp_path / f"{i}.jpg", image)

    array, labels, skipped = load_image_folder(tmp_path, (1, 3, 32, 32))

    assert array.shape == (3, 3, 32, 32) and labels is None and not skipped
    # lossy, but close to the source on average
    assert np.abs(array[:, 0] - images[..., 0] / 255.0).mean() < 0.05


def test_errors_are_one_clear_line(tmp_path):
    with pytest.raises(CalibrationError, match="no such directory"):
        load_image_folder(tmp_path / "missing", (1, 3, 8, 8))
    with pytest.raises(CalibrationError, match="no .png/.jpg/.jpeg images"):
        load_image_folder(tmp_path, (1, 3, 8, 8))
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match="none of the 1 images"):
        load_image_folder(tmp_path, (1, 3, 8, 8))
    _write_png(tmp_path / "ok.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(CalibrationError, match="--mean has 2 values, the model takes 3"):
        load_image_folder(tmp_path, (1, 3, 8, 8), mean=[0.1, 0.2])
    with pytest.raises(CalibrationError, match="--std values must be positive"):
        load_image_folder(tmp_path, (1, 3, 8, 8), std=0.0)
    with pytest.raises(CalibrationError, match="cannot tell the channel axis"):
        load_image_folder(tmp_path, (1, 5, 8, 8))
    with pytest.raises(CalibrationError, match="rank-4"):
        resolve_layout((1, 64))


def test_folder_detection(tmp_path):
    assert not is_image_folder(tmp_path)
    _write_png(tmp_path / "c" / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert is_image_folder(tmp_path) and not is_image_folder(tmp_path / "c" / "a.png")


def test_image_options_parse_comma_lists():
    seen = {}

    @click.command()
    @image_options
    def cmd(mean, std, channel_order, layout):
        seen.update(mean=mean, std=std, channel_order=channel_order, layout=layout)

    result = CliRunner().invoke(cmd, ["--mean", "0.485,0.456,0.406", "--channel-order", "bgr"])
    assert result.exit_code == 0, result.output
    assert seen == {"mean": [0.485, 0.456, 0.406], "std": None, "channel_order": "bgr", "layout": "auto"}
    result = CliRunner().invoke(cmd, ["--std", "a,b"])
    assert result.exit_code == 2 and "expected comma-separated numbers" in result.output
