"""The peers on models (a) and (b), at our MAC budgets, data and epochs: torch-pruning 1.6.1 and onnxsim 0.8.1.

    python benchmarks/real/peers.py torch-pruning --target 0.5     # one peer run, prints JSON
    python benchmarks/real/peers.py onnxsim --target 0.5 [--recovery bn|finetune|block|none]
    python benchmarks/real/peers.py table [--ours lagrangian,magnitude]  # every saved model, one table
    python benchmarks/real/peers.py ... --model fashion-resnet18   # the same on model (b)

Model (a), ``--model fashion`` (the default): the ImageNet MobileNetV2 fine-tuned on Fashion-MNIST
at 64 px (:mod:`fashion`), TorchScript export. Model (b), ``--model fashion-resnet18``: the
ResNet-18 trained here on Fashion-MNIST at 64 px (:mod:`fashion_resnet18`), TorchScript export;
its runs go to ``peers_fashion-resnet18.jsonl`` and ``peer_fashion-resnet18_*.onnx``, our rows to
``peers-ours-fashion-resnet18/``. Data, both models: the 2,000 labelled calibration images and the
2,000 test images of :mod:`method_grid` (``fashion_calib_2000_labelled.npz``, ``fashion_test_2000.npz``).

**torch-pruning** works on the torch model (BatchNorm unfolded): ``MetaPruner`` with
``GroupMagnitudeImportance(p=2)`` (L2 of each dependency group), ``round_to=8``, the classifier
(MobileNetV2's ``classifier[1]``, ResNet-18's ``fc``) ignored, one shot (its README's "prune, then fine-tune"; with 3 epochs there is no room for
fine-tuning between iterative steps). ``pruning_ratio`` is bisected on
``tp.utils.count_ops_and_params`` until the MACs are within 2% of the target fraction. Then the
distillation fine-tuning of our grid, in torch: loss ``T^2 KL(teacher/T || student/T) + CE``
(T = 2, ``onnxprune.calibration.TaskLoss(kd+ce)``), teacher logits from the original ONNX model
by onnxruntime, Adam lr 1e-4, 3 epochs, batch 32, shuffled with seed = epoch. Exported with
``torch.onnx.export(dynamo=False)`` (opset 17, which folds BatchNorm like the original's export).

**onnxsim** works on the ONNX model: ``onnxsim.simplify`` (BatchNorm is already folded by the
TorchScript export; simplify keeps it so), then ``onnxsim.pruning.apply_structured_pruning``
(L2 filter norm, per-layer ``sparsity``), ``sparsity`` bisected on
``onnxprune.graph.macs.count_macs``. Recovery (``--recovery``), all on the calibration images:
``finetune`` = ``onnxsim.apply_pruning_finetune`` (closed-form ridge refit, MatMul/Gemm only),
``bn`` = ``onnxsim.bn_recovery.recover_batch_norm(target_model=simplified original)`` (a BN
inserted after each conv, its statistics fit to the pruned model's activations on the calibration
images, its scale/bias to the original's where that tensor kept its width), ``block`` = ``onnxsim.apply_block_finetune_all_blocks``
(Adam on each block against the original's activation, MSE).

Evaluation, the same for every row, ours included: onnxruntime CPU on the 2,000 test images
(accuracy, top-1 agreement with the original), MACs and params by
``onnxprune.graph.macs.count_macs`` at [1, 3, 64, 64], and the ORT CPU latency ratio at batch 32
(``onnxprune.measure.latency.measure_latency``, every model interleaved in one run, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from assets import cache_dir  # noqa: E402

SHAPE = {"image": (1, 3, 64, 64)}
MODELS = ("fashion", "fashion-resnet18")
MODEL = "fashion"  # which model the run is on; set once from --model in main()


def tag() -> str:
    """The model's part of the file names: none for model (a) (its files predate model (b))."""
    return "" if MODEL == "fashion" else f"{MODEL}_"


def data():
    calib = np.load(cache_dir() / "fashion_calib_2000_labelled.npz")
    test = np.load(cache_dir() / "fashion_test_2000.npz")
    return (calib["image"], calib["labels"]), (test["image"], test["labels"])


def original_path() -> Path:
    if MODEL == "fashion-resnet18":
        from fashion_resnet18 import fashion_resnet18

        return fashion_resnet18(exporter="torchscript")
    return cache_dir() / "fashion_mobilenet_v2_64_torchscript.onnx"


def ort_logits(model, x: np.ndarray, threads: int = 2) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    data_ = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(data_, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 250]})[0] for i in range(0, len(x), 250)])


def macs(model) -> tuple[int, int]:
    from onnxprune.graph.macs import count_macs

    cost = count_macs(model, SHAPE)
    return cost.total_macs, cost.total_params


def evaluate(model) -> dict:
    """Accuracy and agreement on the test images, MAC and param fractions of the original."""
    import onnx

    (_, _), (xt, yt) = data()
    model = onnx.load(str(model)) if not hasattr(model, "graph") else model
    onnx.checker.check_model(model)
    original = onnx.load(str(original_path()))
    ref, out = ort_logits(original, xt), ort_logits(model, xt)
    (m0, p0), (m1, p1) = macs(original), macs(model)
    return {"accuracy": float((out.argmax(1) == yt).mean()), "agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
            "original_accuracy": float((ref.argmax(1) == yt).mean()), "macs_frac": m1 / m0, "params_frac": p1 / p0}


def bisect(macs_of, target: float, lo: float = 0.0, hi: float = 0.95, tol: float = 0.02, steps: int = 10):
    """The ratio whose MAC fraction is within ``tol`` of ``target`` (MACs fall as the ratio grows)."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        frac = macs_of(mid)
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (mid, frac)
        if abs(frac - target) <= tol * target / 2:  # well inside the 2% band: stop
            break
        lo, hi = (mid, hi) if frac > target else (lo, mid)
    return best


# --------------------------------------------------------------------------- torch-pruning
def fashion_torch():
    import torch
    from models import imagenet_mobilenet_v2_torch

    if MODEL == "fashion-resnet18":
        from fashion_resnet18 import trained_resnet18

        return trained_resnet18()
    model = imagenet_mobilenet_v2_torch()
    model.classifier[1] = torch.nn.Linear(model.last_channel, 10)
    model.load_state_dict(torch.load(cache_dir() / "fashion_mobilenet_v2_64.pt", weights_only=True))
    return model.eval()


def tp_prune(ratio: float):
    import torch
    import torch_pruning as tp

    model = fashion_torch()
    example = torch.randn(1, 3, 64, 64)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, iterative_steps=1, ignored_layers=[classifier(model)],
                                  round_to=8, global_pruning=False)
    pruner.step()
    return model


def classifier(model):
    return model.fc if MODEL == "fashion-resnet18" else model.classifier[1]


def export_onnx(model, example):
    import io

    import onnx
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


def run_torch_pruning(args) -> dict:
    import onnx
    import torch
    import torch.nn.functional  # noqa: F401
    import torch_pruning as tp

    from onnxprune.calibration import TaskLoss

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    example = torch.randn(1, 3, 64, 64)
    base_ops, _ = tp.utils.count_ops_and_params(fashion_torch(), example)
    m0 = macs(onnx.load(str(original_path())))[0]
    if args.ratio is not None:  # a ratio given: no bisection (the MACs jump across round_to steps)
        ratio = args.ratio
        tp_frac = tp.utils.count_ops_and_params(tp_prune(ratio), example)[0] / base_ops
    elif args.count == "tp":
        ratio, tp_frac = bisect(lambda r: tp.utils.count_ops_and_params(tp_prune(r), example)[0] / base_ops, args.target)
    else:  # the MACs every row of the table is measured by: count_macs on the export
        ratio, _ = bisect(lambda r: macs(export_onnx(tp_prune(r).eval(), example))[0] / m0, args.target)
        tp_frac = tp.utils.count_ops_and_params(tp_prune(ratio), example)[0] / base_ops
    model = tp_prune(ratio)
    prune_s = time.perf_counter() - started
    (xc, yc), _ = data()
    teacher = torch.from_numpy(ort_logits(onnx.load(str(original_path())), xc))
    x, y = torch.from_numpy(xc), torch.from_numpy(yc)
    loss_fn = TaskLoss(["logits"], "kd" if args.label_free else "kd+ce", not args.label_free, args.temperature)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    torch.manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train(not args.bn_eval)  # --bn-eval: BatchNorm fixed at its statistics, as in a BN-folded graph
        # seed 0 keeps the published runs' order (seed = epoch); another seed shuffles differently
        order = torch.from_numpy(np.random.default_rng(epoch + 1000 * args.seed).permutation(len(x)))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            loss = loss_fn([model(x[idx])], [teacher[idx]], None if args.label_free else y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            if (start // args.batch_size) % 20 == 0:
                print(f"  step {start // args.batch_size}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    model.eval()
    proto = export_onnx(model, example)
    seconds = time.perf_counter() - started
    name = (args.count if args.ratio is None else f"ratio{args.ratio}") + ("_bneval" if args.bn_eval else "") + ("_labelfree" if args.label_free else "")
    name += f"_s{args.seed}" if args.seed else ""
    path = cache_dir() / f"peer_{tag()}torch-pruning_{name}_{args.target}.onnx"
    onnx.save(proto, path)
    with torch.no_grad():  # the export matches the trained torch model
        (_, _), (xt, _) = data()
        gap = float(np.abs(model(torch.from_numpy(xt[:64])).numpy() - ort_logits(proto, xt[:64])).max())
    return {"method": "torch-pruning", "count": name, "target": args.target, "pruning_ratio": round(ratio, 4), "tp_macs_frac": tp_frac,
            "prune_seconds": prune_s, "seconds": seconds, "export_max_abs_diff": gap, "path": str(path), **evaluate(proto)}


# --------------------------------------------------------------------------- onnxsim
def run_onnxsim(args) -> dict:
    import onnx
    import onnxsim
    from onnxsim.pruning import apply_structured_pruning

    started = time.perf_counter()
    original = onnx.load(str(original_path()))
    simplified, ok = onnxsim.simplify(original)
    m0 = macs(original)[0]
    convs = [n for n in simplified.graph.node if n.op_type == "BatchNormalization"]
    ratio, frac = bisect(lambda s: macs(apply_structured_pruning(simplified, sparsity=s, importance_norm="l2"))[0] / m0,
                         args.target, hi=0.99)
    pruned = apply_structured_pruning(simplified, sparsity=ratio, importance_norm="l2")
    prune_s = time.perf_counter() - started
    (xc, _), _ = data()
    batches = [{"image": xc[i:i + args.batch_size]} for i in range(0, len(xc), args.batch_size)]
    notes = {"simplify_check": ok, "bn_nodes_after_simplify": len(convs), "sparsity": round(ratio, 4),
             "macs_frac_after_pruning": frac, "before_recovery": evaluate(pruned)}
    recovered = pruned
    try:
        if args.recovery == "finetune":
            recovered = onnxsim.apply_pruning_finetune(simplified, pruned, calibration_data=batches)
        elif args.recovery == "bn":
            from onnxsim.bn_recovery import recover_batch_norm

            recovered = recover_batch_norm(pruned, calibration_data=batches, target_model=simplified)
        elif args.recovery == "block":
            iterations = args.epochs * len(batches)
            recovered, results = onnxsim.apply_block_finetune_all_blocks(
                simplified, pruned, calibration_data=batches, num_iterations=iterations, learning_rate=args.lr)
            notes["blocks"] = [str(r)[:200] for r in results]
    except Exception as exc:  # noqa: BLE001 -- recorded: the table says what the peer's API did
        notes["recovery_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    seconds = time.perf_counter() - started
    path = cache_dir() / f"peer_{tag()}onnxsim_{args.recovery}_{args.target}.onnx"
    onnx.save(recovered, path)
    return {"method": f"onnxsim+{args.recovery}", "target": args.target, "prune_seconds": prune_s, "seconds": seconds,
            "path": str(path), **notes, **evaluate(recovered)}


# --------------------------------------------------------------------------- the table
def table(args) -> None:
    import onnx

    from onnxprune.measure.latency import measure_latency

    rows = []
    for line in Path(args.results).read_text().splitlines():
        if line.strip().startswith("{"):
            rows.append(json.loads(line))
    store = cache_dir() / args.ours_dir / "scores.json"  # our rows' evaluation, by file (they do not change)
    cached = json.loads(store.read_text()) if store.exists() else {}
    for name in args.ours.split(","):
        for target in (0.5, 0.25):
            path = cache_dir() / args.ours_dir / f"pruned_{MODEL}_torchscript_{name}_{target}.onnx"
            if path.exists():
                scores = cached.get(str(path)) or evaluate(path)
                cached[str(path)] = scores
                rows.append({"method": f"onnxprune {name}", "target": target, "path": str(path), "seconds": None, **scores})
    store.write_text(json.dumps(cached))
    if args.no_latency:
        stats = [None] * (len(rows) + 1)
    else:
        (xc, _), _ = data()
        stats = measure_latency([onnx.load(str(original_path()))] + [onnx.load(r["path"]) for r in rows],
                                {"image": xc[:32]}, threads=1, batch=32, seconds=args.seconds)
    if stats[0] is not None:
        print(f"original: {stats[0].p50_ms:.2f} ms p50 at batch 32, 1 thread")
    print("| target | method | accuracy | top-1 agreement | MACs | params | speedup b32 | time s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row, stat in sorted(zip(rows, stats[1:]), key=lambda rs: (-rs[0]["target"], rs[0]["method"])):
        seconds = "-" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        if row["method"] == "torch-pruning":  # which MAC count its ratio was bisected on
            count = row.get("count", "tp")
            row["method"] += f" ({count[5:]} fixed)" if count.startswith("ratio") else f" (ratio on {count} count)"
        print(f"| {row['target']} | {row['method']} | {100 * row['accuracy']:.2f} | {row['agreement']:.3f} | "
              f"{row['macs_frac']:.3f} | {row['params_frac']:.3f} | {speedup(stats[0], stat)} | {seconds} |", flush=True)


def speedup(base, stat) -> str:
    return "-" if stat is None else f"{base.p50_ms / stat.p50_ms:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("torch-pruning", "onnxsim", "table"))
    parser.add_argument("--model", default="fashion", choices=MODELS,
                        help="fashion: model (a), the MobileNetV2; fashion-resnet18: model (b), the ResNet-18")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--count", default="onnx", choices=("onnx", "tp"),
                        help="torch-pruning: bisect the ratio on count_macs of the export (onnx) or on tp.utils.count_ops_and_params")
    parser.add_argument("--ratio", type=float, default=None,
                        help="torch-pruning: this pruning_ratio, not bisected (to bracket a target no ratio reaches)")
    parser.add_argument("--label-free", action="store_true",
                        help="torch-pruning: fine-tune by distillation alone (kd), as method_grid.py without --labels")
    parser.add_argument("--bn-eval", action="store_true",
                        help="torch-pruning: fine-tune with BatchNorm in eval mode (its statistics fixed, as our "
                             "methods train the BN-folded export), to isolate what BatchNorm's train mode adds")
    parser.add_argument("--recovery", default="bn", choices=("none", "finetune", "bn", "block"))
    parser.add_argument("--results", default=None,
                        help="the JSON lines of the runs [default: peers.jsonl in the cache; model (b): peers_fashion-resnet18.jsonl]")
    parser.add_argument("--ours", default="lagrangian,magnitude,uniform")
    parser.add_argument("--ours-dir", default=None,
                        help="table: our grid's models (method_grid.py writes them to the cache; copied here so a rerun of the grid cannot mix)")
    parser.add_argument("--seconds", type=float, default=6.0, help="table: latency measurement time")
    parser.add_argument("--no-latency", action="store_true", help="table: accuracy only")
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    suffix = "" if MODEL == "fashion" else f"_{MODEL}"
    args.results = args.results or str(cache_dir() / f"peers{suffix}.jsonl")
    args.ours_dir = args.ours_dir or ("peers-ours" if MODEL == "fashion" else f"peers-ours-{MODEL}")
    if args.what == "table":
        table(args)
        return
    result = run_torch_pruning(args) if args.what == "torch-pruning" else run_onnxsim(args)
    line = json.dumps(result)
    with open(args.results, "a") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
