"""Gates on ONNX initializer slices: the torch model with gates equals onnxruntime on the ONNX
model whose slices were scaled by hand; baking folds the gates into the weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import torch
from onnx import numpy_helper

from onnxprune.graph.verify import run_onnxruntime
from onnxprune.importing.importer import import_model
from onnxprune.importing.writeback import write_back
from onnxprune.methods._support.channel_gates import GateBank, GateSite, bake, install, original, sites_from_onnx
from onnxprune.passes.structures import TensorAxis

# fc1 as Gemm transB=1 (torch layout [out, in]), fc2 as MatMul (ONNX [in, out]: transposed in torch)
MLP_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N,6] x) => (float[N,3] y) {
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu (h)
  m = MatMul (r, w2)
  y = Add (m, b2)
}
"""


def _mlp() -> onnx.ModelProto:
    model = onnx.parser.parse_model(MLP_TEXT)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (5, 6)), ("b1", (5,)), ("w2", (5, 3)), ("b2", (3,))):
        model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def _scaled(model: onnx.ModelProto, scales: dict[str, tuple[int, np.ndarray]]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in scales:
            axis, v = scales[init.name]
            arr = numpy_helper.to_array(init)
            shape = [1] * arr.ndim
            shape[axis] = -1
            init.CopyFrom(numpy_helper.from_array((arr * v.reshape(shape)).astype(np.float32), init.name))
    return out


def test_gated_torch_matches_onnxruntime_on_scaled_slices():
    imported = import_model(_mlp(), {"x": (64, 6)})
    g = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.25], requires_grad=True)
    bank = GateBank()
    axes = [TensorAxis("w1", 0, 0, 5), TensorAxis("b1", 0, 0, 5)]
    install(imported.module, bank, sites_from_onnx(imported, "hidden", axes))
    # a second, scalar gate on output columns 1:3 of the transposed MatMul weight (stacked use)
    install(imported.module, bank, sites_from_onnx(imported, "cols", [TensorAxis("w2", 1, 1, 3)]))
    bank.set("hidden", lambda: g)
    bank.set("cols", lambda: torch.tensor(0.5))
    x = np.random.default_rng(1).normal(size=(64, 6)).astype(np.float32)
    got = imported.module(torch.from_numpy(x))
    ref = _scaled(imported.onnx_model, {"w1": (0, g.detach().numpy()), "b1": (0, g.detach().numpy()),
                                        "w2": (1, np.array([1, 0.5, 0.5], np.float32))})
    np.testing.assert_allclose(got.detach().numpy(), run_onnxruntime(ref, {"x": x})[0], atol=1e-5, rtol=1e-4)
    got.sum().backward()
    # open gates get a gradient; a gate at exactly 0 before a ReLU gets none (ReLU'(0) = 0 in
    # torch), which is why the Bernoulli method trains sampled-off units at a tiny positive gate
    assert bool((g.grad[[0, 2, 3, 4]] != 0).all()) and float(g.grad[1]) == 0.0

    # baking folds the gates into the same Parameter objects, and write_back sees the folded values
    raw = original(imported.module, imported.params["w1"].module_path, imported.params["w1"].attr)
    bake(imported.module)
    assert imported.tensor("w1") is raw or imported.tensor("w1").data_ptr() == raw.data_ptr()
    written = write_back(imported)
    np.testing.assert_allclose(run_onnxruntime(written, {"x": x})[0], run_onnxruntime(ref, {"x": x})[0],
                               atol=1e-5, rtol=1e-4)


def test_absent_gate_is_identity_and_bad_slice_raises():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    x = torch.randn(2, 3)
    before = model(x)
    bank = GateBank()
    install(model, bank, [GateSite("k", "0", "weight", 0, 0, 4)])
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="outside"):
        install(model, bank, [GateSite("k", "0", "bias", 0, 2, 9)])


def test_block_gates_repeat_per_channel():
    """A Flatten spreads channel c over ``block`` consecutive features: the gate repeats."""
    lin = torch.nn.Linear(2, 6, bias=False)
    torch.nn.init.ones_(lin.weight)
    bank = GateBank()
    install(lin, bank, [GateSite("k", "", "weight", 0, 0, 6, block=2)])
    bank.set("k", lambda: torch.tensor([1.0, 0.0, 2.0]))
    assert lin.weight[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 2.0, 2.0]
