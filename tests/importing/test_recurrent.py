"""LSTM and GRU converters (onnxprune/converters/recurrent.py) against onnxruntime, and their
channel rule (frozen, with the reason).

Each case builds one node with random weights, imports it (the import check compares torch with
onnxruntime), compares again on a second input at atol 1e-5 / rtol 1e-4, checks that W, R and B
are trainable parameters and that writing back an unchanged import reproduces the initializers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import UnsupportedModelError
from onnxprune.importing.importer import import_model, run_torch
from onnxprune.importing.writeback import write_back
from onnxprune.passes import analyze
from onnxprune.passes.testing import ATOL, RTOL, run

SEQ, BATCH, INPUT, HIDDEN = 5, 2, 3, 4


def recurrent_model(op: str, direction: str = "forward", bias: bool = True, initial: bool = False,
                    layout: int = 0, outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"), opset: int = 14,
                    seed: int = 0, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if op == "LSTM" else 3
    outputs = tuple(o for o in outputs if op == "LSTM" or o != "Y_c")
    weights = {"W": (dirs, gates * HIDDEN, INPUT), "R": (dirs, gates * HIDDEN, HIDDEN)}
    if bias:
        weights["B"] = (dirs, 2 * gates * HIDDEN)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), n) for n, s in weights.items()]
    x_shape = [SEQ, BATCH, INPUT] if layout == 0 else [BATCH, SEQ, INPUT]
    state = [dirs, BATCH, HIDDEN] if layout == 0 else [BATCH, dirs, HIDDEN]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    node_inputs = ["x", "W", "R", "B" if bias else ""]
    if initial:
        node_inputs += ["", "h0"] + (["c0"] if op == "LSTM" else [])
        graph_inputs += [helper.make_tensor_value_info("h0", TensorProto.FLOAT, state)]
        if op == "LSTM":
            graph_inputs += [helper.make_tensor_value_info("c0", TensorProto.FLOAT, state)]
    names = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    node_outputs = [n if n in outputs else "" for n in names]
    while node_outputs and not node_outputs[-1]:
        node_outputs.pop()
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, node_inputs, node_outputs, name=f"{op.lower()}0", hidden_size=HIDDEN,
                            direction=direction, **attrs)
    y_shape = [SEQ, dirs, BATCH, HIDDEN] if layout == 0 else [BATCH, SEQ, dirs, HIDDEN]
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, y_shape if n == "Y" else state)
                     for n in node_outputs if n]
    graph = helper.make_graph([node], "rnn", graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _check(model: onnx.ModelProto) -> None:
    imported = import_model(model)  # raises when torch and onnxruntime disagree
    rng = np.random.default_rng(7)
    feeds = {v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
             for v in model.graph.input}
    expected, actual = run(model, feeds), run_torch(imported, feeds)
    assert len(expected) == len(actual) == len(model.graph.output)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)
    for name in ("W", "R", "B"):
        if name in {i.name for i in model.graph.initializer}:
            assert isinstance(imported.tensor(name), torch.Tensor)
            ref = imported.params[name]
            assert isinstance(getattr(imported.module.get_submodule(ref.module_path), ref.attr), torch.nn.Parameter)
    written = write_back(imported)
    assert {i.name: i.raw_data or numpy_helper.to_array(i).tobytes() for i in written.graph.initializer} == {
        i.name: i.raw_data or numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_directions(op, direction) -> None:
    _check(recurrent_model(op, direction))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_initial_states_and_no_bias(op) -> None:
    """(``layout=1``, batch first, is converted too, but onnxruntime refuses to run it.)"""
    _check(recurrent_model(op, "bidirectional", bias=False, initial=True, seed=1))
    _check(recurrent_model(op, "forward", initial=True, seed=2))
    _check(recurrent_model(op, "reverse", bias=False, seed=3))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_output_subsets_and_opset_7(op) -> None:
    _check(recurrent_model(op, outputs=("Y",)))
    _check(recurrent_model(op, outputs=("Y_h",), seed=4))
    _check(recurrent_model(op, "reverse", opset=11, seed=5))


@pytest.mark.parametrize("reset", [0, 1])
def test_gru_linear_before_reset(reset) -> None:
    _check(recurrent_model("GRU", "bidirectional", seed=6, linear_before_reset=reset))


@pytest.mark.parametrize("attrs, message", [
    ({"clip": 1.0}, "clip"),
    ({"activations": ["Relu", "Tanh", "Tanh"]}, "activations"),
    ({"input_forget": 1}, "input_forget"),
])
def test_unsupported_variants_are_refused_with_the_reason(attrs, message) -> None:
    with pytest.raises(UnsupportedModelError, match=f"LSTM-14 \\(node lstm0\\): .*{message}"):
        import_model(recurrent_model("LSTM", **attrs))


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_hidden_units_are_frozen_with_the_reason(op, gates) -> None:
    """Gemm features -> LSTM/GRU/RNN -> Gemm: the features the recurrent op reads are frozen with
    its reason; the head after it opens its own (prunable) units."""
    rng = np.random.default_rng(0)
    arrays = {"w1": (INPUT, 6), "W": (1, gates * HIDDEN, 6), "R": (1, gates * HIDDEN, HIDDEN), "w2": (HIDDEN, 8),
              "w3": (8, 2)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["f"], name="proj"),
        helper.make_node("Relu", ["f"], ["fr"], name="relu"),
        helper.make_node(op, ["fr", "W", "R"], ["", "h"], name=op.lower(), hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["h", "axis0"], ["hs"], name="squeeze"),
        helper.make_node("MatMul", ["hs", "w2"], ["g"], name="fc1"),
        helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
        helper.make_node("MatMul", ["gr", "w3"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, INPUT])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    import_model(model)
    groups = {g.id: g for g in analyze(model).groups}
    assert not groups["w1"].prunable and f"{op} '{op.lower()}': recurrent hidden units" in groups["w1"].reason
    assert groups["w2"].prunable
