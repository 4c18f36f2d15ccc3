"""Model (b) of the real benchmark: a torchvision ResNet-18 trained from scratch here on
Fashion-MNIST, then exported like a user would (both exporters).

    python benchmarks/real/fashion_resnet18.py [--train 12000] [--epochs 1] [--threads 2]

The input pipeline is model (a)'s (:func:`fashion.to_images`): bilinear resize to 64 px, the gray
channel replicated to RGB, ImageNet mean/std. So the grid's cached calibration and test files of
model (a) (``fashion_calib_2000_labelled.npz``, ``fashion_test_2000.npz``) serve model (b) too.

Training images: :func:`fashion.split` permutes the 60k training images with seed 0; model (a)
was fine-tuned on ``order[:12000]`` and the grid calibrates on ``order[12000:14000]``. Model (b)
trains on the first ``--train`` of ``order[:12000] + order[14000:]``, so never on a calibration
image. Recipe: random init (``torchvision.models.resnet18(num_classes=10)``), SGD momentum 0.9,
weight decay 5e-4, one-cycle to lr 0.02 (at 0.1 the loss rose above chance near the peak), batch
64, random horizontal flips, one epoch of 12,000 images: that fits a ~25 min budget on the shared
2-core CPU (ResNet-18 at 64 px, 148M MACs, trains at ~15 img/s on two idle cores, ~8 img/s with
other jobs running).

The trained model's test accuracy (all 10k test images) is stored in its metadata
(``test_accuracy``) and printed. Cached as ``fashion_resnet18_64.pt``,
``fashion_resnet18_64_torchscript.onnx`` and ``fashion_resnet18_64_dynamo.onnx``.
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

from assets import cache_dir, fashion_mnist  # noqa: E402
from fashion import to_images  # noqa: E402
from models import EXPORTERS, export  # noqa: E402

SIZE = 64
CALIB_SLICE = slice(12000, 14000)  # the grid's calibration images in fashion.split's order


def resnet18_torch() -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def trained_resnet18() -> torch.nn.Module:
    """The cached trained model (``fashion_resnet18_64.pt``), eval mode."""
    model = resnet18_torch()
    model.load_state_dict(torch.load(cache_dir() / f"fashion_resnet18_{SIZE}.pt", weights_only=True))
    return model.eval()


def train_indices(count: int, seed: int = 0) -> np.ndarray:
    """``count`` training-split indices, none of them a calibration image of the grid."""
    order = np.random.default_rng(seed).permutation(60000)
    pool = np.concatenate([order[:CALIB_SLICE.start], order[CALIB_SLICE.stop:]])
    assert not set(pool[:count]) & set(order[CALIB_SLICE])
    return pool[:count]


def train_model(train: int, epochs: int) -> torch.nn.Module:
    x_all, y_all = fashion_mnist("train")
    idx = train_indices(train)
    x, y = to_images(x_all[idx], SIZE), y_all[idx]
    torch.manual_seed(0)
    model = resnet18_torch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=steps)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        rng = np.random.default_rng(epoch)
        order = rng.permutation(len(x))
        total, seen = 0.0, 0
        for step, start in enumerate(range(0, len(order) - 63, 64)):
            ids = order[start:start + 64]
            batch = torch.from_numpy(x[ids])
            flip = torch.from_numpy(rng.random(len(ids)) < 0.5)
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), torch.from_numpy(y[ids]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, seen = total + float(loss.detach()) * len(ids), seen + len(ids)
            if step % 25 == 0:
                print(f"  epoch {epoch + 1} step {step}: loss {total / seen:.3f}, {time.perf_counter() - started:.0f} s",
                      flush=True)
        print(f"epoch {epoch + 1}: loss {total / seen:.3f}, {time.perf_counter() - started:.0f} s", flush=True)
    return model.eval()


def ort_accuracy(proto: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    pred = np.concatenate([session.run(None, {"image": x[i:i + 250]})[0].argmax(1) for i in range(0, len(x), 250)])
    return float((pred == y).mean())


def export_gap(model: torch.nn.Module, proto: onnx.ModelProto) -> float:
    """Largest |logit difference| between the torch model and onnxruntime on 16 test images."""
    import onnxruntime as ort

    x = to_images(fashion_mnist("test")[0][:16], SIZE)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    return float(np.abs(session.run(None, {"image": x})[0] - ref).max())


def fashion_resnet18(train: int = 12000, epochs: int = 1, exporter: str = "torchscript") -> Path:
    """The trained model's ONNX file (trained, exported and cached on first use)."""
    path = cache_dir() / f"fashion_resnet18_{SIZE}_{exporter}.onnx"
    if path.exists():
        return path
    torch_path = cache_dir() / f"fashion_resnet18_{SIZE}.pt"
    if torch_path.exists():
        model = trained_resnet18()
    else:
        model = train_model(train, epochs)
        torch.save(model.state_dict(), torch_path)
    proto = export(model.eval(), torch.randn(1, 3, SIZE, SIZE), exporter)
    accuracy_path = cache_dir() / f"fashion_resnet18_{SIZE}.test_accuracy"
    if accuracy_path.exists():  # the 10k-image evaluation takes minutes on the CPU: once per model
        acc = float(accuracy_path.read_text())
    else:  # by onnxruntime on the export (faster than torch on the CPU, and what the grid measures)
        xt, yt = fashion_mnist("test")
        acc = ort_accuracy(proto, to_images(xt, SIZE), yt)
        accuracy_path.write_text(f"{acc:.4f}")
    onnx.helper.set_model_props(proto, {"source": "benchmarks/real/fashion_resnet18.py", "test_accuracy": f"{acc:.4f}",
                                        "input_size": str(SIZE),
                                        "trained_on": f"{train} Fashion-MNIST train images, {epochs} epochs, from scratch"})
    onnx.checker.check_model(proto)
    gap = export_gap(model, proto)
    assert gap < 1e-3, f"{exporter} export differs from the torch model by {gap}"
    onnx.save(proto, path)
    print(f"{path.name}: test accuracy {acc:.4f} (10k Fashion-MNIST test images), "
          f"export vs torch max |diff| {gap:.1e} on 16 test images", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for exporter in EXPORTERS:
        print(fashion_resnet18(args.train, args.epochs, exporter))


if __name__ == "__main__":
    main()
