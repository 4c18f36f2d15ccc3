"""Issue 18: LTP's two gradient switches, LC's channel C step, and LTP vs L1/L2 on a BN net.

Every choice is measured on a validation split carved from the training data: a stratified 20%
of ``digits_train.npz`` (288 images, ``sklearn.model_selection.train_test_split(random_state=0)``)
is withheld, the runs distil on the other 1,149 images (``--holdout 0``), and defaults are chosen
on the validation accuracy. ``digits_test.npz`` (360 images) is only reported, never used to choose.

A. LTP, L0 weight gradient on/off (× simplified/exact mask gradient): digits MLP at a 95% target
   and at a fixed λ (no target, so no bisection), and the BN VGG at a 90% target and a fixed λ.
   With a target, the sparsity the λ control reached before the final calibration is printed too.
B. LC, channel granularity on the BN VGG and ResNet at 50% of the channels: today's C step
   (relative norm, unweighted penalty: not a projection for it), ``--lc-channel-norm plain``
   (plain ℓ2 norm, unweighted penalty) and ``relative`` (relative norm, penalty weighted alike).
C. BN ResNet: explicit L2 and L1 penalties on the conv weights vs LTP at a fixed λ (no target).
   Sparsity is the fraction of conv weights with |w| < r·rms(w_l), rms over the layer (r = 1e-2,
   1e-1), so a layer shrunk uniformly (what BN lets L1/L2 do) does not count as sparse.

    python benchmarks/lc_ltp_switches.py [--only A,B,C] [--seeds 1] [--epochs-mlp 30] [--epochs-cnn 20]
        [--ltp-cases 0,2] [--no-exact]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxprune.graph.macs import count_macs
from onnxprune.methods._support import threshold_masks as masking
from onnxprune.methods.base import PruningMethod, register, registry
from onnxprune.methods.lc import LC
from onnxprune.methods.options import MethodOptions, option
from onnxprune.run import pipeline
from onnxprune.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1] / "sample_models"
SHAPES = {"image": (1, 1, 8, 8)}


def make_split(tmp: Path) -> dict[str, Path]:
    """fit (1,149) / val (288) from digits_train.npz, stratified, seeded; test untouched."""
    from sklearn.model_selection import train_test_split

    data = np.load(ROOT / "digits_train.npz")
    idx = np.arange(len(data["labels"]))
    fit_idx, val_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=data["labels"])
    paths = {"fit": tmp / "digits_fit.npz", "val": tmp / "digits_val.npz", "test": ROOT / "digits_test.npz"}
    for key, sel in (("fit", np.sort(fit_idx)), ("val", np.sort(val_idx))):
        np.savez(paths[key], image=data["image"][sel], labels=data["labels"][sel])
    return paths


def accuracy(model: onnx.ModelProto, path: Path) -> float:
    import onnxruntime as ort

    data = np.load(path)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"image": data["image"]})[0].argmax(1) == data["labels"]).mean())


def prune(args, model: str, method: str, options: dict, epochs: int, seed: int = 0):
    start = time.perf_counter()
    result = pipeline.run(pipeline.PruneConfig(
        model=ROOT / f"{model}.onnx", out=None, method=method, method_options=options,
        calib=str(args.split["fit"]), holdout=0.0,
        train=TrainConfig(epochs=epochs, lr=args.lr, seed=seed, quiet=True, device="cpu")))
    result.val = accuracy(result.model, args.split["val"])
    result.test = accuracy(result.model, args.split["test"])
    result.seconds = time.perf_counter() - start
    return result


def mean_over_seeds(args, *prune_args):
    runs = [prune(args, *prune_args, seed=seed) for seed in range(args.seeds)]
    return runs, 100 * np.mean([r.val for r in runs]), 100 * np.mean([r.test for r in runs])


# --------------------------------------------------------------------------- A. LTP switches


def check_ltp(args) -> None:
    print("\n## A. LTP: the L0 term's weight gradient on/off, with the simplified or exact mask gradient")
    print("(val = 288 validation images carved from digits_train, test = digits_test; mean over seeds)\n")
    print("| model | setting | mask gradient | L0 weight gradient | sparsity | before calibration | val % | test % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    cases = [("mlp", "target 95%", {"sparsity": 0.95}, args.epochs_mlp),
             ("mlp", "λ = 1, no target", {"l0_weight": 1.0, "ltp_finetune": 0.0}, max(5, args.epochs_mlp // 3)),
             ("vgg", "target 90%", {"sparsity": 0.9}, args.epochs_cnn),
             ("vgg", "λ = 1, no target", {"l0_weight": 1.0, "ltp_finetune": 0.0}, max(5, args.epochs_cnn // 2))]
    chosen = [int(i) for i in args.ltp_cases.split(",")] if args.ltp_cases else range(len(cases))
    for model, label, options, epochs in (cases[i] for i in chosen):
        for exact in (False, True):
            if exact and (model != "mlp" or args.no_exact):
                continue  # the exact mask gradient is the comparison only; measured on the MLP
            for l0grad in (False, True):
                runs, val, test = mean_over_seeds(args, model, "ltp", {
                    **options, "ltp_exact_mask_gradient": exact, "ltp_l0_weight_gradient": l0grad}, epochs)
                sparsity = 100 * np.mean([r.plan.meta["sparsity"] for r in runs])
                before = [r.plan.meta["sparsity_before_calibration"] for r in runs]
                before = "–" if before[0] is None else f"{100 * np.mean(before):.1f}%"
                print(f"| {model} | {label} | {'exact' if exact else 'simplified'} | {'on' if l0grad else 'off'} "
                      f"| {sparsity:.1f}% | {before} | {val:.1f} | {test:.1f} |", flush=True)
                factors = runs[0].plan.meta["threshold_factors"]
                log.warning("  %s %s: t per layer %s; val per seed %s (%.0f s)", model, label,
                            ", ".join(f"{v:.3g}" for v in factors.values()),
                            " ".join(f"{100 * r.val:.1f}" for r in runs), runs[0].seconds)


# --------------------------------------------------------------------------- B. LC channel C step


@register
class LCRelativeUnweighted(LC):
    """Today's (before issue 18) channel LC: C step by relative norm, rounded to channel
    multiples at every C step, with the unweighted penalty: not the projection for its penalty."""

    name = "lc-relative-unweighted"

    def setup(self, ctx) -> None:
        self.options = dataclasses.replace(self.options, lc_channel_norm="relative")
        super().setup(ctx)
        self.penalty_weight = None

    def _keep_channels(self, values, align: bool = False):
        return super()._keep_channels(values, True)


def check_lc_channel(args) -> None:
    print("\n## B. LC, channel granularity at 50% of the channels: the C step and its penalty\n")
    print("| model | C step / penalty | MACs kept | layer densities | ‖w − θ‖ first → last | val % | test % |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    variants = [("lc-relative-unweighted", {}, "relative norm / unweighted (before)"),
                ("lc", {"lc_channel_norm": "plain"}, "plain norm / unweighted"),
                ("lc", {"lc_channel_norm": "relative"}, "relative norm / weighted alike")]
    for model in ("vgg", "resnet"):
        macs0 = count_macs(onnx.load(ROOT / f"{model}.onnx"), SHAPES).total_macs
        for method, extra, label in variants:
            runs, val, test = mean_over_seeds(args, model, method, {
                "sparsity": 0.5, "granularity": "channel", **extra}, args.epochs_cnn)
            r = runs[0]
            macs = count_macs(r.model, SHAPES).total_macs
            dens = " / ".join(f"{v:.2f}" for v in r.plan.meta["layer_density"].values())
            gaps = r.plan.meta["gaps"]
            print(f"| {model} | {label} | {100 * macs / macs0:.1f}% | {dens} | {gaps[0]:.3g} → {gaps[-1]:.3g} "
                  f"| {val:.1f} | {test:.1f} |", flush=True)
            log.warning("  %s %s: val per seed %s (%.0f s)", model, label,
                        " ".join(f"{100 * x.val:.1f}" for x in runs), r.seconds)


# --------------------------------------------------------------------------- C. BN: L1/L2 vs L0


@dataclasses.dataclass(frozen=True)
class WeightPenaltyOptions(MethodOptions):
    method = "bench-weight-penalty"
    kind: str = option("l1", "l1: α·Σ|w|; l2: α/2·Σw²", choices=("l1", "l2"))
    alpha: float = option(1e-4, "penalty weight α", min=0)


@register
class WeightPenalty(PruningMethod):
    """Training with α·Σ|w| (l1) or α/2·Σw² (l2) on the prunable weights; nothing is masked."""

    name = "bench-weight-penalty"
    Options = WeightPenaltyOptions

    def setup(self, ctx) -> None:
        self.kind, self.alpha = self.options.kind, self.options.alpha
        self.weights = list(ctx.weights.values())

    def penalty(self, ctx):
        if self.kind == "l1":
            return self.alpha * sum(w.abs().sum() for w in self.weights)
        return 0.5 * self.alpha * sum(w.pow(2).sum() for w in self.weights)

    def finalize(self, ctx):
        return masking.plan_from_keep({}, {"method": self.name})


def conv_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: t for t in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "Conv" and n.input[1] in inits]


def relative_sparsity(model: onnx.ModelProto, r: float) -> float:
    """Fraction of conv weights with |w| < r · rms of their layer."""
    small = total = 0
    for w in conv_weights(model):
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        small += int(np.sum(np.abs(w) < r * rms)) if rms > 0 else w.size
        total += w.size
    return small / total


def zero_small(model: onnx.ModelProto, r: float) -> onnx.ModelProto:
    """A copy with every conv weight |w| < r · rms of its layer set to 0 (one deployment rule)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    convs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for i, t in enumerate(model.graph.initializer):
        if t.name in convs:
            w = numpy_helper.to_array(t).copy()
            w[np.abs(w) < r * np.sqrt(np.mean(w.astype(np.float64) ** 2))] = 0
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    return model


def check_bn(args) -> None:
    print("\n## C. BN ResNet: L1 / L2 penalties vs LTP's L0 (no target, so nothing forces a sparsity)\n")
    original = onnx.load(ROOT / "resnet.onnx")
    print("| training | conv |w| < 1% of the layer's rms | < 10% | exact zeros | conv weight rms | val % | test % "
          "| val % with those < 1% zeroed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    flat = np.concatenate([w.reshape(-1) for w in conv_weights(original)])
    print(f"| original | {100 * relative_sparsity(original, 1e-2):.1f}% | {100 * relative_sparsity(original, 1e-1):.1f}% "
          f"| {100 * np.mean(flat == 0):.1f}% | {np.sqrt(np.mean(flat ** 2)):.3g} | {100 * accuracy(original, args.split['val']):.1f} "
          f"| {100 * accuracy(original, args.split['test']):.1f} | {100 * accuracy(zero_small(original, 1e-2), args.split['val']):.1f} |")
    cases = [(f"L2 α = {a:g}", "bench-weight-penalty", {"kind": "l2", "alpha": a}) for a in (1e-3, 1e-2)]
    cases += [(f"L1 α = {a:g}", "bench-weight-penalty", {"kind": "l1", "alpha": a}) for a in (1e-5, 1e-4, 1e-3)]
    cases += [(f"LTP λ = {lam:g}", "ltp", {"l0_weight": lam, "ltp_finetune": 0.0}) for lam in (0.3, 1.0)]
    for label, method, options in cases:
        runs, val, test = mean_over_seeds(args, "resnet", method, options, args.epochs_cnn)
        m = runs[0].model
        flat = np.concatenate([w.reshape(-1) for w in conv_weights(m)])
        print(f"| {label} | {100 * relative_sparsity(m, 1e-2):.1f}% | {100 * relative_sparsity(m, 1e-1):.1f}% "
              f"| {100 * np.mean(flat == 0):.1f}% | {np.sqrt(np.mean(flat ** 2)):.3g} | {val:.1f} | {test:.1f} "
              f"| {100 * accuracy(zero_small(m, 1e-2), args.split['val']):.1f} |", flush=True)
        log.warning("  resnet %s (%.0f s)", label, runs[0].seconds)


log = logging.getLogger("lc_ltp_switches")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="A,B,C")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs-mlp", type=int, default=30)
    parser.add_argument("--epochs-cnn", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ltp-cases", default="", help="A: indices of the cases to run (default all)")
    parser.add_argument("--no-exact", action="store_true", help="A: skip the exact-mask-gradient rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("onnxprune").setLevel(logging.ERROR)
    assert "lc-relative-unweighted" in registry()
    with tempfile.TemporaryDirectory() as tmp:
        args.split = make_split(Path(tmp))
        print(f"seeds {args.seeds}, epochs MLP {args.epochs_mlp} / CNN {args.epochs_cnn}, Adam lr {args.lr}, "
              "kd+ce distillation on 1,149 images of digits_train (--holdout 0)")
        checks = {"A": check_ltp, "B": check_lc_channel, "C": check_bn}
        for key in args.only.split(","):
            checks[key](args)


if __name__ == "__main__":
    main()
