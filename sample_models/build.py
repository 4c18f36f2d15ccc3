"""Build onnxprune's sample models: five small classifiers trained on scikit-learn's digits.

Data: the 1,797 8x8 grey images of ``sklearn.datasets.load_digits`` with pixel values 0..16,
scaled to [0, 1] (``x / 16``) and laid out as ``image`` float32 [N, 1, 8, 8] with ``labels``
int64 [N]. A stratified split (``train_test_split(test_size=0.2, random_state=0, stratify=y)``)
gives 1,437 training and 360 held-out images.

Models (each one input ``image`` [N, 1, 8, 8] with a dynamic batch N, one output ``logits``
[N, 10]): an MLP of the LeNet-300-100 shape, a small ResNet, a MobileNetV2-style net with a
squeeze-excite block, a plain VGG-style CNN, and a tiny pre-LN transformer encoder over 2x2
pixel patches with hand-written attention. Each minimises cross-entropy with AdamW under a
one-cycle learning-rate schedule; inputs are augmented by random translations of up to one
pixel (zero padding, then a random 8x8 crop).

Determinism: one seed drives torch (weights, shuffling, augmentation); torch runs with
deterministic algorithms on one thread, so ``python sample_models/build.py`` rebuilds the same
weights on the same platform. Export uses torch's default (dynamo) exporter at its default
opset with the weights embedded; its default graph optimisation runs without the Conv+BN
fusion, so BatchNormalization nodes stay. Every file is checked with ``onnx.checker`` and
compared with torch under onnxruntime (atol 1e-5, rtol 1e-4), and its held-out accuracy is
measured with onnxruntime (a model under 95% is not written).

Usage: ``python sample_models/build.py [--out DIR] [--models mlp,resnet,...] [--seed 0]``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import pathlib
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import onnxscript.rewriter
import torch
import torch.nn.functional as F
from onnxscript.rewriter.rules.common import _fuse_batchnorm
from rich.console import Console
from rich.table import Table
from torch import nn

log = logging.getLogger("sample_models")

HERE = pathlib.Path(__file__).resolve().parent
SPLIT_SEED = 0
TEST_FRACTION = 0.2
NUM_CLASSES = 10
ATOL, RTOL = 1e-5, 1e-4
MIN_ACCURACY = 0.95


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Digits:
    image: np.ndarray  # float32 [N, 1, 8, 8] in [0, 1]
    labels: np.ndarray  # int64 [N]
    train_idx: np.ndarray  # int64, indices into image/labels
    test_idx: np.ndarray


def load_digits() -> Digits:
    """The full digits set and its seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    image = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels), dtype=np.int64),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels,
    )
    return Digits(image, labels, np.sort(train_idx), np.sort(test_idx))


def write_data(digits: Digits, out: pathlib.Path) -> None:
    """digits.npz (all images), digits_train/test.npz (the split), digits_split.npz (indices)."""
    np.savez_compressed(out / "digits.npz", image=digits.image, labels=digits.labels)
    for name, idx in (("train", digits.train_idx), ("test", digits.test_idx)):
        np.savez_compressed(
            out / f"digits_{name}.npz", image=digits.image[idx], labels=digits.labels[idx]
        )
    np.savez_compressed(out / "digits_split.npz", train_idx=digits.train_idx, test_idx=digits.test_idx)


def shift_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random (dy, dx) in {-1, 0, 1}^2, filling with zeros."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=generator)
    dx = torch.randint(0, 3, (n,), generator=generator)
    ar = torch.arange(8)
    rows = (dy[:, None] + ar)[:, :, None]  # [n, 8, 1]
    cols = (dx[:, None] + ar)[:, None, :]  # [n, 1, 8]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    """LeNet-300-100: Flatten, 64-300-100-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.flatten(image)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); shortcut = 1x1 conv + BN when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, 3 stages x 2 basic blocks (16/32/64 channels at 8x8/4x4/2x2), GAP, fc."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = conv_bn(1, widths[0], 3, 1)
        blocks, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(2):
                blocks.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(image)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_hw(x))), W1/W2 as 1x1 convs."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, ReLU6], 3x3 depthwise, ReLU6, [SE], 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers.append(conv_bn(hidden, cout, 1))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """Stem conv, 5 inverted-residual blocks (two with SE), 1x1 head conv, GAP, fc."""

    # (out channels, stride, expansion, squeeze-excite)
    CONFIG = (
        (16, 1, 1, False), (24, 2, 4, False), (24, 1, 4, True), (32, 2, 4, True), (32, 1, 4, False)
    )

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16, 3, 1), nn.ReLU6())
        blocks, cin = [], 16
        for cout, stride, expand, se in self.CONFIG:
            blocks.append(InvertedResidual(cin, cout, stride, expand, se))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(conv_bn(cin, 64, 1), nn.ReLU6())
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(image)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VGG(nn.Module):
    """[conv-BN-ReLU x2, maxpool] x2 (16, 32 channels), flatten 32x2x2 -> fc 64 -> fc 10."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for width in (16, 32):
            for _ in range(2):
                layers += [conv_bn(cin, width), nn.ReLU()]
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * 2 * 2, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


class SelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head)) V per head, then an output projection; plain ops only."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1]
        return x.reshape(-1, tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, dim = x.shape[1], x.shape[2]
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim**-0.5), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, tokens, dim)
        return self.proj(out)


class EncoderLayer(nn.Module):
    """Pre-LN: x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x))))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    """2x2 patches (16 tokens of 4 pixels) -> linear embed + learned positions -> 2 pre-LN
    encoder layers -> final LN -> mean over tokens -> linear head."""

    def __init__(self, dim: int = 32, heads: int = 4, mlp_dim: int = 64, depth: int = 2, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.tokens = (8 // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p, g = self.patch, 8 // self.patch
        # [N,1,8,8] -> [N,g,p,g,p] -> [N,g,g,p,p] -> [N, tokens, p*p]; -1 keeps the batch dynamic.
        patches = image.reshape(-1, g, p, g, p).transpose(2, 3).reshape(-1, self.tokens, p * p)
        x = self.layers(self.embed(patches) + self.pos)
        return self.head(self.norm(x).mean(dim=1))


@dataclasses.dataclass(frozen=True)
class Spec:
    build: Callable[[], nn.Module]
    epochs: int
    lr: float
    doc: str


SPECS: dict[str, Spec] = {
    "mlp": Spec(MLP, 100, 3e-3, "LeNet-300-100 MLP (Flatten, 64-300-100-10, ReLU)"),
    "resnet": Spec(
        ResNet, 30, 5e-3,
        "ResNet: stem conv + 3 stages x 2 BasicBlocks (16/32/64), 1x1-conv shortcuts when "
        "downsampling, GAP, fc",
    ),
    "mobilenet": Spec(
        MobileNet, 40, 5e-3,
        "MobileNetV2-style: inverted residuals with depthwise 3x3 convs, ReLU6, two "
        "squeeze-excite blocks, GAP, fc",
    ),
    "vgg": Spec(VGG, 30, 5e-3, "VGG-style: [conv-BN-ReLU x2, maxpool] x2 (16/32), flatten 32x2x2 into fc 64, fc 10"),
    "transformer": Spec(
        Transformer, 100, 3e-3,
        "Pre-LN transformer encoder over 2x2 pixel patches: linear embed, learned positions, "
        "2 layers x 4-head self-attention + GELU MLP, mean pool, linear head",
    ),
}


# ----------------------------------------------------------------------------- train / export / check


def train(model: nn.Module, spec: Spec, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """Train in place; returns CPU seconds per epoch (process time of one thread, so other
    processes on a shared machine inflate it far less than wall time)."""
    generator = torch.Generator().manual_seed(seed)
    batch = 64
    steps_per_epoch = math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=spec.epochs * steps_per_epoch)
    model.train()
    start = time.process_time()
    for _ in range(spec.epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(shift_augment(x[idx], generator)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return (time.process_time() - start) / spec.epochs


def optimize_keeping_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """torch's default post-export optimisation (``onnxscript.optimizer.optimize``: constant
    folding, the default rewrite rules, dead-code removal) minus its Conv+BatchNormalization
    fusion: the sample models must keep their BatchNormalization nodes, whose scales are the
    channel gates that pruning methods and the channel-group analysis act on."""
    fuse_bn = {id(rule) for rule in _fuse_batchnorm.rules}
    defaults = onnxscript.rewriter._DEFAULT_REWRITE_RULES
    rules = tuple(rule for rule in defaults if id(rule) not in fuse_bn)
    # optimize_ir reads the module-level rule list at call time; patch.object raises if it is gone.
    with mock.patch.object(onnxscript.rewriter, "_DEFAULT_REWRITE_RULES", rules):
        return onnxscript.optimizer.optimize(model)


def strip_export_traces(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node/per-value debugging metadata (stack traces with absolute
    paths and line numbers of this script, fx node dumps, the ExportedProgram signature): they
    make the files larger and differ between checkouts, and nothing downstream reads them."""
    graph = model.graph
    graph.ClearField("metadata_props")
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        item.ClearField("metadata_props")


def export(model: nn.Module, name: str, spec: Spec, example: torch.Tensor, seed: int) -> onnx.ModelProto:
    """torch's default (dynamo) exporter at its default opset, dynamic batch N, weights embedded;
    its default optimisation is run without Conv+BN fusion, then traces are stripped and the
    model's doc_string and metadata_props set."""
    batch = torch.export.Dim("N")
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"image": {0: batch}},
        optimize=False,
        verbose=False,
    )
    proto = optimize_keeping_batchnorm(program.model_proto)
    strip_export_traces(proto)
    proto.doc_string = (
        f"onnxprune sample model '{name}': {spec.doc}. Input image float32 [N,1,8,8] in [0,1] "
        f"(sklearn digits / 16); output logits [N,10]. Built by sample_models/build.py (seed {seed})."
    )
    onnx.helper.set_model_props(
        proto,
        {
            "source": "onnxprune sample_models/build.py",
            "dataset": "sklearn.datasets.load_digits, stratified 80/20 split, random_state=0",
            "seed": str(seed),
        },
    )
    return proto


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_export(proto: onnx.ModelProto, model: nn.Module, x_test: torch.Tensor, y_test: np.ndarray) -> float:
    """checker, ORT == torch within tolerance at two batch sizes; returns ORT held-out accuracy."""
    onnx.checker.check_model(proto, full_check=True)
    session = ort_session(proto)
    with torch.no_grad():
        expected = model(x_test).numpy()
    for n in (1, len(x_test)):
        (got,) = session.run(["logits"], {"image": x_test[:n].numpy()})
        np.testing.assert_allclose(got, expected[:n], atol=ATOL, rtol=RTOL)
    (logits,) = session.run(["logits"], {"image": x_test.numpy()})
    return float((logits.argmax(1) == y_test).mean())


def op_summary(proto: onnx.ModelProto) -> str:
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    ops = sorted({n.op_type for n in proto.graph.node})
    return f"opset {opset}: {', '.join(ops)}"


def build(names: list[str], out: pathlib.Path, seed: int) -> list[dict]:
    digits = load_digits()
    out.mkdir(parents=True, exist_ok=True)
    write_data(digits, out)
    x_train = torch.from_numpy(digits.image[digits.train_idx])
    y_train = torch.from_numpy(digits.labels[digits.train_idx])
    x_test = torch.from_numpy(digits.image[digits.test_idx])
    y_test = digits.labels[digits.test_idx]
    rows = []
    for name in names:
        spec = SPECS[name]
        torch.manual_seed(seed)
        start = time.process_time()
        model = spec.build()
        epoch_s = train(model, spec, x_train, y_train, seed)
        proto = export(model, name, spec, x_test[:2], seed)
        ort_acc = check_export(proto, model, x_test, y_test)
        batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        if sum(n.op_type == "BatchNormalization" for n in proto.graph.node) != batchnorms:
            raise RuntimeError(f"{name}: the export lost BatchNormalization nodes (fused away?)")
        if ort_acc < MIN_ACCURACY:
            raise RuntimeError(f"{name}: held-out accuracy {ort_acc:.4f} < {MIN_ACCURACY}")
        props = {p.key: p.value for p in proto.metadata_props}
        onnx.helper.set_model_props(proto, {**props, "test_accuracy": f"{ort_acc:.4f}"})
        path = out / f"{name}.onnx"
        onnx.save_model(proto, path)
        rows.append(
            dict(
                name=name,
                params=sum(p.numel() for p in model.parameters()),
                kb=path.stat().st_size / 1024,
                epoch_s=epoch_s,
                epochs=spec.epochs,
                build_s=time.process_time() - start,
                acc=ort_acc,
                ops=op_summary(proto),
            )
        )
        log.info("%s: accuracy %.4f, %.3f CPU s/epoch", name, ort_acc, epoch_s)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="output directory (default: sample_models/)")
    parser.add_argument("--models", default=",".join(SPECS), help=f"comma-separated subset of {','.join(SPECS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    start = time.perf_counter()
    rows = build(names, args.out, args.seed)
    table = Table("model", "params", "file KB", "epochs", "CPU s/epoch", "CPU s", "held-out acc")
    for r in rows:
        table.add_row(
            r["name"], str(r["params"]), f"{r['kb']:.1f}", str(r["epochs"]), f"{r['epoch_s']:.3f}",
            f"{r['build_s']:.1f}", f"{r['acc']:.4f}",
        )
    Console(width=100).print(table)
    for r in rows:
        print(f"{r['name']}: {r['ops']}")
    print(f"total build time {time.perf_counter() - start:.1f} s wall")


if __name__ == "__main__":
    main()
