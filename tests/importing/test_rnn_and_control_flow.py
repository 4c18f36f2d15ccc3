"""The plain ONNX RNN converter, If folding, and control flow refused by name (issue 14 item 5).

- RNN-7/14 forward, reverse and bidirectional, with and without B and ``initial_h``, any subset
  of the outputs: the import check compares torch with onnxruntime, then a second input is
  compared at atol 1e-5 / rtol 1e-4; W, R and B are trainable parameters and write back bit for
  bit; for structured methods the RNN is frozen with its reason.
- An If whose condition is an initializer, a Constant, or computed from constants only is
  replaced by its branch during normalization (the branch's own weights move into the graph and
  train); the normalized graph equals the original under onnxruntime.
- An If with a computed condition, a Loop and a Scan are refused with one line naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.main import main
from onnxprune.errors import UnsupportedModelError
from onnxprune.importing.importer import import_model, run_torch
from onnxprune.importing.normalize import normalize
from onnxprune.importing.writeback import write_back
from onnxprune.passes.testing import ATOL, RTOL, run

SEQ, BATCH, INPUT, HIDDEN = 5, 2, 3, 4


def rnn_model(direction: str = "forward", bias: bool = True, initial: bool = False,
              outputs: tuple[str, ...] = ("Y", "Y_h"), opset: int = 14, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    shapes = {"W": (dirs, HIDDEN, INPUT), "R": (dirs, HIDDEN, HIDDEN)}
    if bias:
        shapes["B"] = (dirs, 2 * HIDDEN)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.6).astype(np.float32), n) for n, s in shapes.items()]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, INPUT])]
    node_inputs = ["x", "W", "R", "B" if bias else ""]
    if initial:
        node_inputs += ["", "h0"]
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, BATCH, HIDDEN]))
    node_outputs = [name if name in outputs else "" for name in ("Y", "Y_h")]
    while not node_outputs[-1]:
        node_outputs.pop()
    node = helper.make_node("RNN", node_inputs, node_outputs, name="rnn0", hidden_size=HIDDEN, direction=direction)
    shapes_out = {"Y": [SEQ, dirs, BATCH, HIDDEN], "Y_h": [dirs, BATCH, HIDDEN]}
    graph = helper.make_graph([node], "rnn", graph_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes_out[n]) for n in node_outputs
                               if n], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model: onnx.ModelProto, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
            for v in model.graph.input}


def _check_rnn(model: onnx.ModelProto) -> None:
    imported = import_model(model)  # raises when torch and onnxruntime disagree
    feeds = _feeds(model)
    expected, actual = run(model, feeds), run_torch(imported, feeds)
    assert len(expected) == len(actual) == len(model.graph.output)
    for e, a in zip(expected, actual, strict=True):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)
    for name in ("W", "R", "B"):
        if name in {i.name for i in model.graph.initializer}:
            ref = imported.params[name]
            assert isinstance(getattr(imported.module.get_submodule(ref.module_path), ref.attr), torch.nn.Parameter)
    written = write_back(imported)
    assert {i.name: numpy_helper.to_array(i).tobytes() for i in written.graph.initializer} == {
        i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_rnn_directions(direction) -> None:
    _check_rnn(rnn_model(direction))


def test_rnn_initial_state_no_bias_output_subsets_and_opset_7() -> None:
    _check_rnn(rnn_model("bidirectional", bias=False, initial=True, seed=1))
    _check_rnn(rnn_model("reverse", initial=True, seed=2))
    _check_rnn(rnn_model("forward", outputs=("Y_h",), seed=3))
    _check_rnn(rnn_model("bidirectional", outputs=("Y",), opset=11, seed=4))


# (frozen for structured methods: tests/importing/test_recurrent.py, with LSTM and GRU)


# --- If, Loop, Scan ------------------------------------------------------------------------------

def _branch(name: str, op: str, weight: np.ndarray | None = None) -> onnx.GraphProto:
    """A branch computing ``op(x)`` (MatMul with its own weight when given)."""
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2, 4])
    if weight is not None:
        return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_out"], name=f"{name}_mm")],
                                 name, [], [out], [numpy_helper.from_array(weight, f"{name}_w")])
    return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_out"], name=f"{name}_op")], name, [], [out])


def if_model(cond: str, then_branch: onnx.GraphProto, else_branch: onnx.GraphProto) -> onnx.ModelProto:
    """x [2,4] -> If(cond) -> Relu -> MatMul(w) -> y; ``cond``: 'true' / 'false' (a Constant),
    'folds' (Equal of two initializers, 3 == 3), 'computed' (ReduceSum(x) > 0)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")]
    nodes = []
    if cond in ("true", "false"):
        nodes.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(cond == "true"))))
    elif cond == "folds":
        inits += [numpy_helper.from_array(np.array([3], np.int64), "k"), numpy_helper.from_array(np.array(3), "k2")]
        nodes += [helper.make_node("ReduceMax", ["k"], ["km"], keepdims=0), helper.make_node("Equal", ["km", "k2"], ["c"])]
    else:
        inits.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
        nodes += [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"])]
    nodes += [helper.make_node("If", ["c"], ["b"], name="branchy", then_branch=then_branch, else_branch=else_branch),
              helper.make_node("Relu", ["b"], ["r"], name="relu"),
              helper.make_node("MatMul", ["r", "w"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("cond,taken", [("true", "then"), ("false", "else"), ("folds", "then")])
def test_if_with_a_constant_condition_is_folded_to_its_branch(cond, taken) -> None:
    rng = np.random.default_rng(1)
    then_b = _branch("then", "Neg", weight=rng.standard_normal((4, 4)).astype(np.float32))
    else_b = _branch("else", "Sigmoid")
    model = if_model(cond, then_b, else_b)
    folded = normalize(model)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "If" not in ops
    assert ("MatMul" if taken == "then" else "Sigmoid") in ops[:2]
    feeds = _feeds(model)
    np.testing.assert_allclose(run(folded, feeds)[0], run(model, feeds)[0], atol=ATOL, rtol=RTOL)
    imported = import_model(model)  # the import check compares with onnxruntime on the original
    np.testing.assert_allclose(run_torch(imported, feeds)[0], run(model, feeds)[0], atol=ATOL, rtol=RTOL)
    if taken == "then":  # the branch's own weight is now a trainable initializer of the graph
        (name,) = [i.name for i in folded.graph.initializer if i.name.endswith("then_w")]
        ref = imported.params[name]
        assert isinstance(getattr(imported.module.get_submodule(ref.module_path), ref.attr), torch.nn.Parameter)


def _loop_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2, 4])])
    inits = [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(np.array(True), "go")]
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="looper", body=body)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _scan_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "e"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["scan_out"])],
        "body", [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [4]),
                 helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [4])])
    inits = [numpy_helper.from_array(np.zeros(4, np.float32), "s0")]
    nodes = [helper.make_node("Scan", ["s0", "x"], ["total", "y"], name="scanner", body=body, num_scan_inputs=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("build,label", [
    (lambda: if_model("computed", _branch("then", "Neg"), _branch("else", "Sigmoid")), "If-16 (node branchy)"),
    (_loop_model, "Loop-16 (node looper)"),
    (_scan_model, "Scan-16 (node scanner)"),
], ids=["if-computed", "loop", "scan"])
def test_other_control_flow_is_refused_by_name_in_one_line(build, label, tmp_path, capsys) -> None:
    model = build()
    onnx.checker.check_model(model, full_check=True)
    run(model, _feeds(model))  # a valid model onnxruntime runs
    with pytest.raises(UnsupportedModelError, match=rf"{label.replace('(', '[(]').replace(')', '[)]')}: control flow"):
        import_model(model)
    path = tmp_path / "cf.onnx"
    onnx.save(model, str(path))
    capsys.readouterr()
    assert main(["prune", str(path), "--method", "magnitude", "--sparsity", "0.5", "--calib", "synthetic",
                 "--out", str(tmp_path / "out.onnx")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and label in err[0] and "control flow" in err[0], err
    assert not (tmp_path / "out.onnx").exists()
