"""Peak memory of pruning a model over protobuf's 2 GB limit (issue 14 item 7).

Builds a wide MLP (``--layers`` Gemms alternating ``--wide`` x ``--narrow`` features, float32,
ReLU between them) whose weights are written straight into one external data file, layer by
layer, so building it never holds the model in memory. Then, each in its own process so its peak
resident set (``ru_maxrss`` from ``os.wait4``) is its own:

1. optionally (``--inspect``), ``onnxprune inspect --json --no-import-check`` (the groups; else
   they are written down: each hidden Gemm's output units, named after its weight);
2. ``onnxprune apply`` with a plan keeping the first half of every prunable group (no training:
   training a 2 GiB model on this machine's 2 shared cores would take far too long);
3. optionally (``--magnitude``), ``onnxprune prune --method magnitude`` for one epoch on a tiny
   random calibration set (``--no-apply``: this one only).

Also measured: the baseline, a process that only imports what a prune run imports (torch, onnx,
onnxruntime, onnxprune), so each figure can be read as the run's own memory over that baseline
(``over baseline``, in model sizes) as well as in total.

Prints the model's size on disk, each command, its wall time, its peak RSS and the ratio
peak RSS / model size (the goal is <= 2.5x), and checks that the outputs were written with
external data beside them and that onnxruntime on the pruned model matches the masked reference
computed here with numpy (the big model's removed hidden units zeroed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/external_data_rss.py --folder /tmp/onnxprune_big
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ONNXPRUNE = str(Path(sys.executable).with_name("onnxprune"))


def build(folder: Path, layers: int, wide: int, narrow: int, seed: int = 0) -> Path:
    """The MLP with every weight and bias in ``mlp.onnx.data``; returns the .onnx path."""
    folder.mkdir(parents=True, exist_ok=True)
    path, data_name = folder / "mlp.onnx", "mlp.onnx.data"
    rng = np.random.default_rng(seed)
    widths = [narrow] + [wide if i % 2 == 0 else narrow for i in range(layers)]
    inits, nodes, offset = [], [], 0
    with open(folder / data_name, "wb") as data:
        for i in range(layers):
            fan_in, fan_out = widths[i], widths[i + 1]
            for name, shape in ((f"fc{i}.weight", (fan_out, fan_in)), (f"fc{i}.bias", (fan_out,))):
                values = rng.standard_normal(shape, dtype=np.float32)
                values *= np.float32(1.0 / np.sqrt(fan_in))
                values.tofile(data)
                tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", offset), ("length", values.nbytes)):
                    tensor.external_data.add(key=key, value=str(value))
                offset += values.nbytes
                inits.append(tensor)
                del values
            x = "x" if i == 0 else f"r{i - 1}"
            last = i == layers - 1
            nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"],
                                          ["y" if last else f"h{i}"], transB=1, name=f"fc{i}"))
            if not last:
                nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
    graph = helper.make_graph(nodes, "wide_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, narrow])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, widths[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))  # the tensors already point into the data file
    return path


def size_on_disk(path: Path) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))


def run_measured(argv: list[str]) -> tuple[float, int, str]:
    """Like :func:`run`, reaping the child with ``os.wait4`` so its own ``ru_maxrss`` is read."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=null)
        out = proc.stdout.read().decode()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed with exit status {proc.returncode}")
    return wall, usage.ru_maxrss * 1024, out


_BASELINE = """
import onnxruntime, torch, onnx
import onnxprune.cli.main, onnxprune.run.gated, onnxprune.run.pipeline
print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024)
"""


def baseline_rss() -> int:
    """Peak RSS of a process that imports what a prune run imports and does nothing else."""
    return int(subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True,
                              check=True).stdout.split()[-1])


def figures(rss: int, size: int, baseline: int) -> str:
    return (f"peak RSS {rss / 2**30:.2f} GiB  ({rss / size:.2f}x the model; "
            f"{(rss - baseline) / size:.2f}x over the baseline)")


def check_pruned(original: Path, pruned: Path, kept: dict[str, list[int]]) -> float:
    """onnxruntime on ``pruned`` vs the masked reference in numpy; returns the max abs error."""
    import onnxruntime as ort

    model = onnx.load(str(original))  # with its data: numpy reference
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    del model
    layers = len([n for n in weights if n.endswith(".weight")])
    x = np.random.default_rng(1).standard_normal((1, weights["fc0.weight"].shape[1]), dtype=np.float32)
    h = x
    for i in range(layers):
        h = h @ weights[f"fc{i}.weight"].T + weights[f"fc{i}.bias"]
        if i < layers - 1:
            h = np.maximum(h, 0)
            keep = kept.get(f"fc{i}.weight")
            if keep is not None:
                mask = np.zeros(h.shape[1], dtype=bool)
                mask[keep] = True
                h = np.where(mask, h, 0)
    del weights
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(pruned), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, h, atol=1e-4, rtol=1e-4)
    return float(np.abs(got - h).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/onnxprune_big"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--wide", type=int, default=16384)
    parser.add_argument("--narrow", type=int, default=8192)
    parser.add_argument("--magnitude", action="store_true",
                        help="also a 1-epoch (weight-level) magnitude prune (SGD, lr 1e-4, 8 random samples)")
    parser.add_argument("--no-apply", action="store_true", help="skip the `apply` measurement")
    parser.add_argument("--inspect", action="store_true", help="also measure `onnxprune inspect` (slow)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--reuse", action="store_true", help="reuse a model --keep left in --folder")
    args = parser.parse_args()

    started = time.perf_counter()
    model = args.folder / "in" / "mlp.onnx"
    if not (args.reuse and model.exists()):
        model = build(args.folder / "in", args.layers, args.wide, args.narrow)
    size = size_on_disk(model)
    print(f"model      {model} + {model.name}.data: {size / 2**30:.3f} GiB on disk "
          f"(built in {time.perf_counter() - started:.0f} s)")
    baseline = baseline_rss()
    print(f"baseline   {baseline / 2**30:.2f} GiB: a process importing torch, onnx, onnxruntime and onnxprune")

    if args.inspect:
        wall, rss, out = run_measured([ONNXPRUNE, "inspect", str(model), "--json", "--no-import-check"])
        groups = [g for g in json.loads(out)["groups"] if g["prunable"]]
        print(f"inspect    {wall:6.1f} s  {figures(rss, size, baseline)}  "
              f"{len(groups)} prunable groups")
    else:  # the groups of this MLP are known: each hidden Gemm's output units, named after its weight
        groups = [{"id": f"fc{i}.weight", "size": args.wide if i % 2 == 0 else args.narrow}
                  for i in range(args.layers - 1)]

    kept = {g["id"]: list(range(g["size"] // 2)) for g in groups}
    plan = args.folder / "plan.json"
    plan.write_text(json.dumps({"kept": kept}))
    out_dir = args.folder / "out"
    out_dir.mkdir(exist_ok=True)
    pruned = out_dir / "small.onnx"
    argv = [ONNXPRUNE, "apply", str(model), "--plan", str(plan), "--out", str(pruned)]
    if not args.no_apply:
        wall, rss, _ = run_measured(argv)
        data = pruned.with_name(pruned.name + ".data")
        print(f"apply      {wall:6.1f} s  {figures(rss, size, baseline)}  "
              f"-> {pruned.name} {pruned.stat().st_size} B + {data.name} {data.stat().st_size / 2**30:.3f} GiB")
        print(f"           command: {' '.join(argv[1:])}")
        error = check_pruned(model, pruned, kept)
        print(f"           onnxruntime on the pruned model vs the masked reference: max abs error {error:.2e}")

    if args.magnitude:
        calib = args.folder / "calib.npz"
        np.savez(calib, x=np.random.default_rng(2).standard_normal((8, args.narrow), dtype=np.float32))
        pruned = out_dir / "magnitude.onnx"
        argv = [ONNXPRUNE, "prune", str(model), "--method", "magnitude", "--sparsity", "0.5",
                "--calib", str(calib), "--epochs", "1", "--batch-size", "8",
                "--lr", "1e-4", "--optimizer", "sgd", "--holdout", "0", "--latency-seconds", "0",
                "--collapse-agreement", "0", "--quiet",
                "--out", str(pruned)]
        wall, rss, _ = run_measured(argv)
        data = pruned.with_name(pruned.name + ".data")
        print(f"magnitude  {wall:6.1f} s  {figures(rss, size, baseline)}  "
              f"-> {pruned.name} + {data.name} {data.stat().st_size / 2**30:.3f} GiB")
        print(f"           command: {' '.join(argv[1:])}")

    if not args.keep:
        for path in sorted(args.folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()


if __name__ == "__main__":
    main()
