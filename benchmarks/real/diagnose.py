"""Why structured pruning collapsed on a real pretrained network: the measurements.

    python benchmarks/real/diagnose.py [--exporter torchscript] [--eval 128] [--calib 256]

On the ImageNet MobileNetV2 (BatchNorm folded into the convolutions, as both exporters ship it),
against the original's logits on real photo crops it never trained on:

1. *Gates that do not start at 1.* Every prunable channel scaled by a constant gate g (what
   ``sigmoid(2) = 0.88`` did at the start of a Lagrangian run): top-1 agreement, top-5 overlap,
   relative output error. With BN folded nothing renormalizes, so the scale compounds over the
   layers.
2. *Bernoulli samples.* Every prunable channel kept with probability theta (one hard sample, as
   the relaxed samples are mostly within 0.1 of 0 or 1).
3. *The weights' learning rate.* Fine-tuning the unpruned model on its own outputs (the
   distillation loss starts at 0) for two epochs of ``--calib`` crops: any loss of agreement is
   damage done by the optimizer alone.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from assets import photo_crops, photo_paths, split_photos  # noqa: E402
from models import imagenet_mobilenet_v2  # noqa: E402


def agreement(module: torch.nn.Module, x: np.ndarray, ref: np.ndarray) -> str:
    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    top5 = lambda a: np.argsort(-a, axis=1)[:, :5]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5(out), top5(ref))])
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    return f"top-1 agreement {(out.argmax(1) == ref.argmax(1)).mean():.3f}, top-5 overlap {overlap:.3f}, rel. error {rel:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exporter", default="torchscript")
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--lrs", default="1e-3,1e-4,1e-5")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from onnxprune.calibration.losses import kd_loss
    from onnxprune.graph.batching import run_in_slices
    from onnxprune.graph.shapes import resolve_input_shapes
    from onnxprune.importing.importer import import_model
    from onnxprune.methods._support.channel_gates import GateBank, Structure
    from onnxprune.passes.groups import analyze

    original = onnx.load(str(imagenet_mobilenet_v2(args.exporter)))
    shapes = resolve_input_shapes(original, {})
    train_photos, eval_photos = split_photos(photo_paths())
    x_eval = photo_crops(eval_photos, args.eval, seed=1)
    ref = run_in_slices(original, {"image": x_eval})[0]

    imported = import_model(original, shapes)
    structure = Structure.from_context(types.SimpleNamespace(analysis=analyze(imported.onnx_model, shapes),
                                                             imported=imported))
    bank = GateBank()
    structure.install(imported.module, bank)
    print(f"{len(structure.groups)} prunable groups, {sum(structure.groups.values())} channels")
    for g in (1.0, 0.98, 0.88, 0.7):
        for key, size in structure.groups.items():
            bank.set(key, lambda size=size, g=g: torch.full((size,), g))
        print(f"1. every gate at {g}: {agreement(imported.module, x_eval, ref)}")
    generator = torch.Generator().manual_seed(0)
    for theta in (0.9, 0.98, 0.995):
        for key, size in structure.groups.items():
            mask = (torch.rand(size, generator=generator) < theta).float()
            bank.set(key, lambda mask=mask: mask)
        print(f"2. Bernoulli sample, theta {theta}: {agreement(imported.module, x_eval, ref)}")
    bank.clear()

    x_train = photo_crops(train_photos, args.calib, seed=0)
    targets = torch.from_numpy(run_in_slices(original, {"image": x_train})[0])
    for optimizer_name, lr in [("adam", float(v)) for v in args.lrs.split(",")] + [("sgd", 1e-3)]:
        module = import_model(original, shapes).module
        params = [p for p in module.parameters() if p.requires_grad]
        torch.manual_seed(0)
        optimizer = (torch.optim.Adam(params, lr=lr) if optimizer_name == "adam"
                     else torch.optim.SGD(params, lr=lr, momentum=0.9))
        for epoch in range(2):
            module.train()
            order = np.random.default_rng(epoch).permutation(len(x_train))
            for start in range(0, len(order), 32):
                idx = order[start:start + 32]
                loss = kd_loss(module(torch.from_numpy(x_train[idx])), targets[idx], 2.0)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            print(f"3. {optimizer_name} lr {lr:g}, nothing pruned, epoch {epoch + 1}: "
                  f"{agreement(module, x_eval, ref)}", flush=True)


if __name__ == "__main__":
    main()
