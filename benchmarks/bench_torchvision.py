"""`onnxprune bench` on torchvision models (random weights): resnet18 at 224x224 against
resnet18 at 160x160 (0.51x the MACs) and mobilenet_v3_small at 224x224 (0.03x the MACs).

    python benchmarks/bench_torchvision.py [--threads 1] [--seconds 8] [--batch 1,8] [--json]

Exports the models with torch.onnx (dynamic batch) into a temporary folder, then runs the bench
command on them, interleaved, and prints its table (or JSON). Extra options go to `bench`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torchvision

from onnxprune.cli.main import main


def export(model: torch.nn.Module, size: int, path: Path) -> Path:
    model.eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, size, size),), str(path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False,
    )
    return path


def run(extra: list[str]) -> int:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        resnet = torchvision.models.resnet18(weights=None)
        paths = [
            export(resnet, 224, folder / "resnet18_224.onnx"),
            export(resnet, 160, folder / "resnet18_160.onnx"),
            export(torchvision.models.mobilenet_v3_small(weights=None), 224, folder / "mobilenet_v3_small_224.onnx"),
        ]
        defaults = ["--threads", "1", "--seconds", "8", "--batch", "1,8"]
        return main(["bench", *map(str, paths), *defaults, *extra])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
