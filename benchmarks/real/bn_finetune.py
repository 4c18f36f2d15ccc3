"""Fine-tuning torch-pruning's pruned ResNet-18 (model (b)) several ways: where the gap to it comes from.

torch-pruning 1.6.1 prunes model (b)'s torch model (BatchNorm unfolded, ``peers.tp_prune``); the
same pruned network is then fine-tuned with the grid's settings (2,000 labelled calibration images,
kd+ce at T = 2, Adam lr 1e-4, batch 32, 3 epochs) by

- ``tp``: torch-pruning's loop as in ``peers.py`` (BN unfolded, in train mode);
- ``tp-fold``: the same loop, every BN first folded into its conv (as an exporter does) and
  replaced by a fresh BN that is the identity on the calibration statistics (our ``--batchnorm``);
- ``tp-fold-unit``: as ``tp-fold``, each conv also rescaled to unit output spread;
- ``ours`` / ``ours-bn``: the network exported to ONNX and fine-tuned by onnxprune's loop
  (uniform channels at target 1.0, so nothing more is cut), without / with ``--batchnorm``.

Prints the test accuracy on the 2,000 test images (onnxruntime for ``ours``, torch otherwise).

    python benchmarks/real/bn_finetune.py --mode tp-fold [--ratio 0.49] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("tp", "tp-fold", "tp-fold-unit", "ours", "ours-bn")


def conv_bn_pairs(model):
    import torch

    modules = dict(model.named_modules())
    return [(modules[name.replace("bn", "conv").replace("downsample.1", "downsample.0")], bn)
            for name, bn in modules.items() if isinstance(bn, torch.nn.BatchNorm2d)]


def fold_and_reinsert(model, x, unit: bool) -> None:
    """Fold each BN into its conv, then make the BN the identity on the statistics of ``x``."""
    import torch

    pairs = conv_bn_pairs(model)
    stats = {}
    with torch.no_grad():
        for conv, bn in pairs:
            k = bn.weight / (bn.running_var + bn.eps).sqrt()
            conv.weight.mul_(k.view(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(bn.bias - bn.running_mean * k)
            bn.weight.fill_(1.0), bn.bias.zero_(), bn.running_mean.zero_(), bn.running_var.fill_(1.0)
            bn.eps = 0.0  # the identity while the folded network's statistics are gathered
        hooks = [conv.register_forward_hook(
            lambda _m, _i, out, conv=conv: stats.__setitem__(conv, (out.mean((0, 2, 3)), out.var((0, 2, 3)))))
            for conv, _ in pairs]
        model.eval()(x)
        for hook in hooks:
            hook.remove()
        for conv, bn in pairs:
            mean, var = stats[conv]
            bn.eps = 1e-5
            spread = (var + 1e-5).sqrt()
            if unit:
                conv.weight.div_(spread.view(-1, 1, 1, 1))
                conv.bias.div_(spread)
                mean, var = mean / spread, var / spread ** 2
            bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            bn.weight.copy_((var + 1e-5).sqrt() * (spread if unit else 1.0))
            bn.bias.copy_(mean * (spread if unit else 1.0))


def torch_loop(args) -> float:
    import onnx
    import peers
    import torch

    from onnxprune.calibration import TaskLoss

    model = peers.tp_prune(args.ratio)
    (xc, yc), (xt, yt) = peers.data()
    x, y = torch.from_numpy(xc), torch.from_numpy(yc)
    if args.mode != "tp":
        fold_and_reinsert(model, x[:256], unit=args.mode == "tp-fold-unit")
    teacher = torch.from_numpy(peers.ort_logits(onnx.load(str(peers.original_path())), xc, threads=1))
    loss_fn = TaskLoss(["logits"], "kd+ce", True, 2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for epoch in range(3):
        model.train()
        order = torch.from_numpy(np.random.default_rng(args.seed * 1000 + epoch).permutation(len(x)))
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            loss = loss_fn([model(x[idx])], [teacher[idx]], y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(xt[i:i + 256])) for i in range(0, len(xt), 256)])
    return float((out.argmax(1).numpy() == yt).mean())


def our_loop(args) -> float:
    import peers
    import torch
    from fashion_resnet18 import fashion_resnet18
    from method_grid import fashion_data
    from structured_harness import prepare, prune

    from onnxprune.methods._support.channel_baselines import UniformChannels
    from onnxprune.training.loop import TrainConfig

    calib, evaluate = fashion_data(2000, 2000, True)
    setup = prepare(fashion_resnet18(exporter="torchscript"), str(calib), {}, test=str(evaluate))
    pruned = peers.export_onnx(peers.tp_prune(args.ratio).eval(), torch.randn(1, 3, 64, 64))
    setup = dataclasses.replace(setup, original=pruned)  # the teacher stays the unpruned model's outputs
    method = UniformChannels(target_macs="1.0", batchnorm=args.mode == "ours-bn")
    return prune(setup, method, TrainConfig(epochs=3, batch_size=32, lr=1e-4, quiet=True, seed=args.seed))["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--ratio", type=float, default=0.49, help="torch-pruning's ratio (0.49: 26.6%% MACs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import peers
    import torch
    from assets import AssetMissing

    torch.set_num_threads(args.threads)
    peers.MODEL = "fashion-resnet18"
    try:
        accuracy = our_loop(args) if args.mode.startswith("ours") else torch_loop(args)
    except AssetMissing as exc:
        sys.exit(f"skipped: {exc}")
    print(f"{args.mode} ratio {args.ratio} seed {args.seed}: accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
