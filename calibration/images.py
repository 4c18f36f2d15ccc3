"""Calibration data from a folder of images (``--calib DIR`` holding .png / .jpg files).

Each image is decoded by ``torchvision.io.decode_image`` as RGB (or as luma, for a model with one
input channel; an RGB image becomes L = 0.299 R + 0.587 G + 0.114 B and a gray image is copied to
three channels the other way), then fitted to the model's H x W: scaled so that it covers H x W
with its aspect ratio kept (bilinear, antialiased), then center-cropped. Values become

    x = (pixel / 255 - mean[c]) / std[c]

with ``mean``/``std`` per channel in [0, 1] units (torchvision's ImageNet figures are
0.485,0.456,0.406 / 0.229,0.224,0.225), in RGB or BGR channel order and NCHW or NHWC layout.

Labels follow torchvision's ImageFolder convention: when the folder has sub-folders, each
sub-folder is a class, classes sorted by name get indices 0, 1, ..., and every image below a
class folder gets its index; image files directly in a labelled folder are ignored with a
warning. A flat folder of images has no labels. Files that fail to decode are skipped, logged
by name and returned, so one broken file does not stop a run.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxprune.errors import CalibrationError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("auto", "nchw", "nhwc")


def is_image_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory with image files in it or in its sub-folders."""
    path = Path(path)
    return path.is_dir() and any(_is_image(p) for p in path.rglob("*"))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def class_names(path: str | os.PathLike) -> list[str]:
    """Sorted names of the class sub-folders that hold images (index = label); [] when flat."""
    path = Path(path)
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(_is_image(p) for p in d.rglob("*")))


def resolve_layout(input_shape: Sequence[int], layout: str = "auto") -> str:
    """"nchw" or "nhwc" for a rank-4 image input; "auto" picks the axis holding 1 or 3 channels."""
    if len(input_shape) != 4:
        raise CalibrationError(f"image calibration needs a rank-4 input, got shape {tuple(input_shape)}")
    if layout not in LAYOUTS:
        raise CalibrationError(f"layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    if input_shape[1] in (1, 3):
        return "nchw"
    if input_shape[3] in (1, 3):
        return "nhwc"
    raise CalibrationError(f"cannot tell the channel axis of input shape {tuple(input_shape)}; pass --layout")


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise CalibrationError(f"--{what} has {array.size} values, the model takes {channels} channels")
    if what == "std" and np.any(array <= 0):
        raise CalibrationError(f"--std values must be positive, got {array.tolist()}")
    return array


def load_image_folder(
    path: str | os.PathLike,
    input_shape: Sequence[int],
    mean: Sequence[float] | float = 0.0,
    std: Sequence[float] | float = 1.0,
    channel_order: str = "rgb",
    layout: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """All images under ``path`` as one float32 batch shaped like ``input_shape`` (any N).

    Returns ``(images, labels, skipped)``: images [N, C, H, W] or [N, H, W, C], int64 labels [N]
    for a class-folder layout (else None), and the relative paths of files that failed to decode.
    """
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as F
    except ImportError as exc:  # a torch-free install (docs/target-install.md)
        raise CalibrationError(f"--calib {path}: decoding images needs torch and torchvision ({exc}); "
                               "install them, or give an .npz keyed by input name") from None

    root = Path(path)
    if not root.is_dir():
        raise CalibrationError(f"--calib {root}: no such directory")
    layout = resolve_layout(input_shape, layout)
    channels, height, width = (input_shape[1:] if layout == "nchw" else (input_shape[3], *input_shape[1:3]))
    if channels not in (1, 3):
        raise CalibrationError(f"image calibration handles 1 or 3 channels, the model takes {channels}")
    if channel_order not in CHANNEL_ORDERS:
        raise CalibrationError(f"channel order {channel_order!r}: choose from {', '.join(CHANNEL_ORDERS)}")
    mean_c, std_c = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")

    files, labels = _list_files(root)
    if not files:
        raise CalibrationError(f"--calib {root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    images, kept_labels, skipped = [], [], []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of torchcodec, which is not a
        # dependency; they still work, and the warning would repeat once per image
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        for file, label in zip(files, labels):
            name = file.relative_to(root).as_posix()
            try:
                image = decode_image(str(file), mode=mode, apply_exif_orientation=True)
            except (RuntimeError, ValueError) as exc:
                log.warning("skipping %s: cannot decode (%s)", name, _reason(exc))
                skipped.append(name)
                continue
            images.append(_fit(image, height, width, F))
            kept_labels.append(label)
    if skipped:
        log.warning("%d of %d images skipped (cannot decode): %s", len(skipped), len(files),
                    ", ".join(skipped[:10]))
    if not images:
        raise CalibrationError(f"--calib {root}: none of the {len(files)} images could be decoded")

    batch = torch.stack(images).to(torch.float32).div_(255.0).numpy()  # N, C, H, W
    if channel_order == "bgr" and channels == 3:
        batch = batch[:, ::-1]
    batch = (batch - mean_c[None, :, None, None]) / std_c[None, :, None, None]
    if layout == "nhwc":
        batch = batch.transpose(0, 2, 3, 1)
    array = np.ascontiguousarray(batch, dtype=np.float32)
    label_array = None if kept_labels[0] is None else np.asarray(kept_labels, dtype=np.int64)
    log.info("loaded %d images from %s as %s %s", len(array), root, layout, array.shape)
    return array, label_array, skipped


def _list_files(root: Path) -> tuple[list[Path], list[int | None]]:
    classes = class_names(root)
    if not classes:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        return files, [None] * len(files)
    loose = [p.name for p in root.iterdir() if _is_image(p)]
    if loose:
        log.warning("ignoring %d images outside the class folders of %s: %s", len(loose), root,
                    ", ".join(sorted(loose)[:5]))
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if _is_image(p))
        files += found
        labels += [index] * len(found)
    return files, labels


def _reason(exc: Exception) -> str:
    """torchvision's message without its C++ source location: 'decode_png, .../x.cpp:62, Why.'"""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"\.cpp:\d+, (.*)", text)
    return (match.group(1) if match else text).split(". ")[0].rstrip(".")


def _fit(image, height: int, width: int, F):
    """Scale to cover height x width (aspect kept), then center-crop to exactly that size."""
    _, h, w = image.shape
    scale = max(height / h, width / w)
    size = [max(height, round(h * scale)), max(width, round(w * scale))]
    if size != [h, w]:
        image = F.resize(image, size, antialias=True)
    return F.center_crop(image, [height, width])
