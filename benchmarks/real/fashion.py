"""Model (a) of the real benchmark, "a user's model": the ImageNet MobileNetV2 transferred to
Fashion-MNIST and fine-tuned here, then exported like a user would (both exporters).

    python benchmarks/real/fashion.py [--size 64] [--train 12000] [--epochs 2]

Input size 64 px: Fashion-MNIST is 28 px, so 224 px would only upsample it further while costing
12x the MACs (300M vs 25M at 64 px); at 64 px the network's last feature map is 2x2, enough for
the pretrained features to transfer, and fine-tuning plus the whole method grid fit a 2-core CPU.
Images: bilinear resize to ``size``, the gray channel replicated to RGB, ImageNet mean/std.
The fine-tuned model's test accuracy (on the 10k test images) is stored in its metadata
(``test_accuracy``) and printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from assets import IMAGENET_MEAN, IMAGENET_STD, cache_dir, fashion_mnist  # noqa: E402
from models import EXPORTERS, export, imagenet_mobilenet_v2_torch  # noqa: E402


def to_images(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 3, size, size], ImageNet-normalized."""
    x = torch.from_numpy(gray).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1), torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


def split(size: int, train: int, calib: int, test: int, seed: int = 0):
    """Disjoint: ``train`` images to fine-tune the model, the next ``calib`` for pruning
    (both from the training split); ``test`` images of the test split."""
    x, y = fashion_mnist("train")
    order = np.random.default_rng(seed).permutation(len(x))
    fit, cal = order[:train], order[train:train + calib]
    xt, yt = fashion_mnist("test")
    return ((to_images(x[fit], size), y[fit]), (to_images(x[cal], size), y[cal]),
            (to_images(xt[:test], size), yt[:test]))


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((pred.numpy() == y).mean())


def fashion_mobilenet_v2(size: int = 64, train: int = 12000, epochs: int = 2, exporter: str = "torchscript") -> Path:
    """The fine-tuned model's ONNX file (built and cached on first use)."""
    path = cache_dir() / f"fashion_mobilenet_v2_{size}_{exporter}.onnx"
    if path.exists():
        return path
    torch_path = cache_dir() / f"fashion_mobilenet_v2_{size}.pt"
    model = imagenet_mobilenet_v2_torch()
    model.classifier[1] = torch.nn.Linear(model.last_channel, 10)
    (x, y), _, (xt, yt) = split(size, train, 0, 10000)
    if torch_path.exists():
        model.load_state_dict(torch.load(torch_path, weights_only=True))
    else:
        torch.manual_seed(0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
        steps = epochs * (len(x) // 64)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps)
        started = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            order = np.random.default_rng(epoch).permutation(len(x))
            for start in range(0, len(order) - 63, 64):
                idx = order[start:start + 64]
                loss = F.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            print(f"fine-tune epoch {epoch + 1}: loss {float(loss):.3f}, {time.perf_counter() - started:.0f} s", flush=True)
        torch.save(model.state_dict(), torch_path)
    acc = accuracy(model, xt, yt)
    proto = export(model.eval(), torch.randn(1, 3, size, size), exporter)
    onnx.helper.set_model_props(proto, {"source": "benchmarks/real/fashion.py", "test_accuracy": f"{acc:.4f}",
                                        "input_size": str(size), "fine_tuned_on": f"{train} Fashion-MNIST train images"})
    onnx.save(proto, path)
    print(f"{path.name}: test accuracy {acc:.4f} (10k Fashion-MNIST test images)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for exporter in EXPORTERS:
        print(fashion_mobilenet_v2(args.size, args.train, args.epochs, exporter))


if __name__ == "__main__":
    main()
