"""Peak memory of a training prune on a model with external data (issue 14 item 7).

A 72 MiB two-layer MLP (weights in ``mlp.onnx.data``) is pruned by the real command
(magnitude, one SGD step on 8 samples) in a subprocess that reads its own resident set: the
baseline after its imports (torch, onnx, onnxruntime: ~0.7 GiB, more than the model) and its
high-water mark (``VmHWM``) at the end. At this size the peak is the import (the loaded and
the normalized model, the torch parameters) or the final mask update, plus allocator slack
(docs/structures.md, "External data"). The same run peaked 12.2x the model over the baseline
before the changes this test guards (the mask's sort of the concatenated weights, a second copy
in the write-back, the verification's checker and session copies, gradients kept, the loaded
and the normalized model held through training, cycles collected late) and 5.2x after. The bound
(9x) is loose, so that load and allocator noise do not fail it; the old figure fails it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxprune.graph.modelio import model_size_bytes

WIDE, NARROW = 4608, 2048  # two 36 MiB Gemm weights (72 MiB: a large model; tensors above
# glibc's 32 MiB mmap threshold, so a freed one leaves the resident set at once)
BOUND = 9.0  # peak RSS over the baseline, in model sizes


def _mlp_with_external_data(folder):
    rng = np.random.default_rng(0)
    inits, offset = [], 0
    with open(folder / "mlp.onnx.data", "wb") as data:
        for name, shape in (("fc0.weight", (WIDE, NARROW)), ("fc0.bias", (WIDE,)),
                            ("fc1.weight", (NARROW, WIDE)), ("fc1.bias", (NARROW,))):
            values = (rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-1])))
            values.tofile(data)
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "mlp.onnx.data"), ("offset", offset), ("length", values.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            offset += values.nbytes
            inits.append(tensor)
    nodes = [helper.make_node("Gemm", ["x", "fc0.weight", "fc0.bias"], ["h"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h"], ["r"], name="relu0"),
             helper.make_node("Gemm", ["r", "fc1.weight", "fc1.bias"], ["y"], transB=1, name="fc1")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", NARROW])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", NARROW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / "mlp.onnx"))
    np.savez(folder / "calib.npz", x=rng.standard_normal((8, NARROW), dtype=np.float32))
    return folder / "mlp.onnx"


_CHILD = textwrap.dedent("""
    import os, sys
    import onnxprune.run.gated, onnxprune.cli.main as cli  # torch, onnx, onnxruntime loaded
    page = os.sysconf("SC_PAGE_SIZE")
    baseline = int(open("/proc/self/statm").read().split()[1]) * page
    rc = cli.main(sys.argv[1:])
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print("MEMORY", rc, baseline, peak)
""")


@pytest.mark.slow
def test_training_prune_peak_rss_over_baseline_is_bounded(tmp_path):
    model = _mlp_with_external_data(tmp_path)
    size = model_size_bytes(model)
    out = tmp_path / "out.onnx"
    argv = [str(model), "--method", "magnitude", "--sparsity", "0.5", "--calib", str(tmp_path / "calib.npz"),
            "--epochs", "1", "--batch-size", "8", "--lr", "1e-4", "--optimizer", "sgd", "--holdout", "0",
            "--latency-seconds", "0", "--collapse-agreement", "0", "--quiet", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", _CHILD, "prune", *argv], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    line = next((x for x in done.stdout.splitlines() if x.startswith("MEMORY")), None)
    assert line is not None, done.stderr[-2000:]
    rc, baseline, peak = (int(v) for v in line.split()[1:])
    assert rc == 0, done.stderr[-2000:]
    assert out.exists() and (tmp_path / "out.onnx.data").exists()  # external data in, external data out
    over = (peak - baseline) / size
    print(f"peak {peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB, model {size / 2**20:.0f} MiB: "
          f"{over:.2f}x the model over the baseline")
    assert over <= BOUND, f"peak RSS {over:.2f}x the model over the baseline (bound {BOUND}x)"


def test_gradients_are_released_before_the_write_back(tmp_path):
    """The trained module keeps no gradients after training (another copy of every weight)."""
    from onnxprune.run import pipeline
    from onnxprune.training.loop import TrainConfig

    model = tmp_path / "small.onnx"
    rng = np.random.default_rng(1)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 8], rng.standard_normal((16, 8)).astype(np.float32).ravel())
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [weight])
    small = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    small.ir_version = 8
    onnx.save_model(small, str(model))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 8)).astype(np.float32))
    result = pipeline.run(pipeline.PruneConfig(
        model=model, out=None, method="magnitude", method_options={"sparsity": 0.5},
        calib=str(tmp_path / "calib.npz"), holdout=0.0,
        train=TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="sgd", quiet=True, device="cpu")))
    parameters = list(result.imported.module.parameters())
    assert parameters and all(p.grad is None for p in parameters)


def test_a_large_import_builds_on_the_normalized_model_and_restores_it():
    """Over 64 MiB of weights the converters read the normalized model itself, its static shapes
    swapped in for the build (no static-shape copy of every weight): the module equals the one
    built on a copy, and the normalized model keeps its dynamic axes and Reshape allowzero."""
    from onnx import numpy_helper

    from onnxprune.graph.modelio import is_large_model, weightless_header
    from onnxprune.importing import importer

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8192, 2048), dtype=np.float32), "w")  # 64 MiB
    target = numpy_helper.from_array(np.array([-1, 4096, 2], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc"),
                               helper.make_node("Reshape", ["h", "shape"], ["y"], allowzero=1, name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, target])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert is_large_model(model)
    in_place = importer.import_model(model, {"x": (2, 2048)})
    saved = importer._build_in_place
    importer._build_in_place = lambda *_: None  # the copy's path, as for a small model
    try:
        on_copy = importer.import_model(model, {"x": (2, 2048)})
    finally:
        importer._build_in_place = saved
    x = torch.from_numpy(rng.standard_normal((3, 2048), dtype=np.float32))
    assert torch.equal(in_place.module(x), on_copy.module(x))
    assert in_place.params == on_copy.params
    header = lambda imported: weightless_header(imported.onnx_model).SerializeToString()  # noqa: E731
    assert header(in_place) == header(on_copy)
    normalized = in_place.onnx_model
    assert normalized.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert any(a.name == "allowzero" and a.i == 1 for a in normalized.graph.node[1].attribute)
