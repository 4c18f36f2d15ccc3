"""Any valid ONNX name works: torch-attribute names, dots, slashes, colons, spaces, non-ASCII,
empty node names, a node and a tensor sharing one name, very long names, and names the passes
(or an earlier onnxprune run) would create. See docs/names.md."""

from __future__ import annotations

import json
import keyword

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.cli.main import main
from onnxprune.graph.names import NameTable, OnnxNames, argument_reserved, graph_names, identifier, module_reserved
from onnxprune.graph.sparse_storage import to_sparse_storage
from onnxprune.importing.importer import import_model
from onnxprune.importing.normalize import normalize
from onnxprune.importing.writeback import write_back
from onnxprune.passes import PruningPlan, analyze, apply_plan, eliminate_dead_structure, masked_reference
from onnxprune.passes.testing import random_plan, run

INPUT, OUTPUT = "input:0 é/x.y", "self"
SHAPE = (2, 3, 8, 8)
LONG = "very_long_name_" + "x" * 300
HOSTILE_NAMES = ["half", "forward", "train", "eval", "cuda", "float", "type", "training", "initializers",
                 "parametrizations", "_parameters", "self", "class", "lambda", "getattr", "torch", "input",
                 "a.b", "a/b", "a b", "a:b", "a_b", "a__b", "", "_", "0", "0abc", "ﬁ", "fi", "γ", "ü", "ᚠ",
                 "a.b_1", "T", LONG, LONG + "y", "x" * 2000]


def hostile_model(seed: int = 0) -> onnx.ModelProto:
    """A residual conv net + MLP head whose names cover every class of the issue.

    Initializers, Constant outputs and node names collide with nn.Module attributes (``half``,
    ``cuda``, ``train``, ``eval``, ``float``, ``type``, ``forward``, ``training``), with the
    importer's own container (``initializers``) and parametrizations, with each other across
    kinds (node ``forward`` and tensor ``forward``), contain ``.``, ``/``, ``:``, spaces and
    non-ASCII (``ﬁ`` NFKC-folds to the name ``fi`` of another tensor), are empty (nodes), 300
    characters long, or are what the passes would create (``reshape_1_pruned``,
    ``res.out_constant``, ``BatchNormalization_2`` for the unnamed node at position 2).
    """
    rng = np.random.default_rng(seed)

    def f(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    def var(n):
        return rng.uniform(0.5, 2.0, n).astype(np.float32)

    inits = [
        nh.from_array(f(8, 3, 3, 3), "half"), nh.from_array(f(8), "cuda"),
        nh.from_array(f(8) + 1, "train"), nh.from_array(f(8), "eval"), nh.from_array(f(8), "float"),
        nh.from_array(var(8), "type"),
        nh.from_array(f(8, 8, 3, 3), "weight.2/ᚠ"), nh.from_array(f(8), "bias 2"),
        nh.from_array(f(8) + 1, "γ:scale"), nh.from_array(f(8), "β"), nh.from_array(f(8), "μ"),
        nh.from_array(var(8), LONG),
        nh.from_array(f(16), "res.out_constant"),
        nh.from_array(np.array([-1, 4], np.int64), "reshape_1_pruned"),
        nh.from_array(f(16, 4), "initializers"),
        nh.from_array(f(4), "ﬁ"),
        nh.from_array(f(4), "fi"),
        nh.from_array(f(4) + 1, "parametrizations"),
    ]
    nodes = [
        h.make_node("Constant", [], ["forward"], name="", value=nh.from_array(np.array([-1, 128], np.int64))),
        h.make_node("Conv", [INPUT, "half", "cuda"], ["conv.out/0"], name="forward", pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["conv.out/0", "train", "eval", "float", "type"], ["bn:out é"], name=""),
        h.make_node("Relu", ["bn:out é"], ["training"], name="training"),
        h.make_node("Conv", ["training", "weight.2/ᚠ", "bias 2"], ["res/conv:0"], name="BatchNormalization_2",
                    pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["res/conv:0", "γ:scale", "β", "μ", LONG], ["res.out"], name="bn.2"),
        h.make_node("Add", ["training", "res.out"], ["sum"], name="half"),  # branch id == group id 'half'
        h.make_node("Relu", ["sum"], ["relu 2"], name=""),
        h.make_node("AveragePool", ["relu 2"], ["pooled"], name="eval", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Reshape", ["pooled", "forward"], ["flat"], name="reshape"),  # its target gets edited
        h.make_node("Constant", [], ["type.ᚠ weight"], name="train", value=nh.from_array(f(128, 16))),
        h.make_node("MatMul", ["flat", "type.ᚠ weight"], ["mm"], name=""),
        h.make_node("Add", ["mm", "res.out_constant"], ["hidden"], name=LONG),
        h.make_node("Relu", ["hidden"], ["hidden relu"], name="Relu_7"),  # the unnamed Relu's default name
        h.make_node("MatMul", ["hidden relu", "initializers"], ["logits:0"], name="initializers"),
        h.make_node("Add", ["logits:0", "ﬁ"], ["logits:1"], name="ﬁ"),
        h.make_node("Add", ["logits:1", "fi"], ["logits:2"], name="fi"),
        h.make_node("Mul", ["logits:2", "parametrizations"], ["out.y/ü"], name="parametrizations"),
        h.make_node("Reshape", ["out.y/ü", "reshape_1_pruned"], [OUTPUT], name="sparse_storage/half"),
    ]
    graph = h.make_graph(nodes, "names", [h.make_tensor_value_info(INPUT, T.FLOAT, ["N", 3, 8, 8])],
                         [h.make_tensor_value_info(OUTPUT, T.FLOAT, ["N", 4])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def hostile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "hostile.onnx"
    onnx.save(hostile_model(), str(path))
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, **{INPUT: np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)})
    return path


def _feeds(seed: int = 5) -> dict[str, np.ndarray]:
    return {INPUT: np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)}


def _assert_unique_names(model: onnx.ModelProto) -> None:
    """Node names unique (onnxruntime refuses repeats); every value produced once (SSA)."""
    node_names = [n.name for n in model.graph.node if n.name]
    assert len(node_names) == len(set(node_names))
    produced = [*(i.name for i in model.graph.initializer), *(v.name for v in model.graph.input),
                *(o for n in model.graph.node for o in n.output if o)]
    assert len(produced) == len(set(produced))


# ------------------------------------------------------------------------------ the name map


def test_name_table_is_bijective_and_every_torch_name_is_safe() -> None:
    for reserved in (module_reserved(), argument_reserved()):
        table = NameTable(reserved)
        torch_names = [table.add(name) for name in HOSTILE_NAMES]
        assert [table.add(name) for name in HOSTILE_NAMES] == torch_names  # stable
        assert len(set(torch_names)) == len(set(HOSTILE_NAMES))  # injective
        for onnx_name, torch_name in zip(HOSTILE_NAMES, torch_names):
            assert table.onnx_name(torch_name) == onnx_name  # and back
            assert torch_name.isascii() and torch_name.isidentifier() and not keyword.iskeyword(torch_name)
            assert torch_name not in reserved and len(torch_name) <= 80
    assert {"half", "forward", "training", "parametrizations", "graph", "code"} <= module_reserved()
    assert {"self", "getattr", "torch", "lambda"} <= argument_reserved()
    assert identifier("a.b/c:0 d") == "a_b_c_0_d" and identifier("w1") == "w1"


def test_onnx_names_never_reuse_a_name_of_any_kind() -> None:
    model = hostile_model()
    names = OnnxNames.of_proto(model.graph)
    assert {"forward", "half", "reshape_1_pruned", "sparse_storage/half", LONG} <= names.taken
    assert names.fresh("half") == "half_1" and names.fresh("half") == "half_2"
    assert names.fresh("reshape_1_pruned") == "reshape_1_pruned_1"
    assert names.fresh("W", sep="__") == "W" and names.fresh("W", sep="__") == "W__1"
    assert names.fresh("") == "_1"


def test_import_maps_every_onnx_name_and_writes_back_bit_identically() -> None:
    model = hostile_model()
    imported = import_model(model, {INPUT: SHAPE})  # the import check (torch vs onnxruntime) passes
    assert imported.check is not None
    normalized = imported.onnx_model
    floats = {i.name for i in normalized.graph.initializer if i.data_type == T.FLOAT}
    assert set(imported.params) == floats  # keyed by ONNX names, every float initializer mapped
    assert {"half", "type.ᚠ weight", "initializers", "parametrizations", "ﬁ", "fi", LONG} <= set(imported.params)
    names = imported.names
    for onnx_name in names.tensors:
        assert names.tensors.onnx_name(names.tensors.torch_name(onnx_name)) == onnx_name
    assert names.tensor("ﬁ") != names.tensor("fi")
    for torch_name, _ in imported.module.named_parameters():
        assert all(part.isascii() and part.isidentifier() for part in torch_name.split("."))
    children = dict(imported.module.named_children())
    assert set(children) == {"initializers", *(names.nodes.torch_name(i) for i in names.nodes)}
    index, node_name = names.onnx_node(names.nodes.torch_name(1))
    assert (index, node_name) == (1, normalized.graph.node[1].name)
    for name in imported.params:  # each parameter is the tensor of that name
        expected = nh.to_array(next(i for i in normalized.graph.initializer if i.name == name))
        np.testing.assert_array_equal(imported.tensor(name).detach().numpy(), expected)
    written = write_back(imported)
    assert [i.SerializeToString() for i in written.graph.initializer] == \
        [i.SerializeToString() for i in normalized.graph.initializer]


def test_inputs_outputs_and_nodes_named_like_python_and_fx_internals_import() -> None:
    """forward() arguments named ``lambda``/``self``/``getattr``, nodes named ``graph``/``code``
    (GraphModule attributes) or holding quotes and backslashes, an initializer named ``torch``."""
    inputs = ["lambda", "self", "getattr"]
    nodes = [h.make_node("Add", ["lambda", "torch"], ["graph"], name="graph"),
             h.make_node("Mul", ["graph", "self"], ["code"], name="code"),
             h.make_node("Sub", ["code", "getattr"], ["out"], name='a"b\\c\'')]
    graph = h.make_graph(nodes, "py", [h.make_tensor_value_info(n, T.FLOAT, [2, 4]) for n in inputs],
                         [h.make_tensor_value_info("out", T.FLOAT, [2, 4])],
                         [nh.from_array(np.arange(4, dtype=np.float32), "torch")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    imported = import_model(model)
    assert imported.input_names == tuple(inputs) and set(imported.params) == {"torch"}
    assert all(imported.names.input(n) not in argument_reserved() for n in inputs)
    write_back(imported)


def test_unnamed_nodes_get_unique_names_and_branch_ids_differ_from_group_ids() -> None:
    analysis = analyze(normalize(hostile_model()), {INPUT: SHAPE})
    group_ids = {g.id for g in analysis.groups}
    branch_ids = {b.id for b in analysis.residual_branches}
    assert branch_ids and not group_ids & branch_ids
    assert {b.add_node for b in analysis.residual_branches} == {"half"}  # the ONNX node is still found by name
    assert group_ids <= {i.name for i in normalize(hostile_model()).graph.initializer}
    nodes = [t.node for t in analysis.mac_terms]
    assert len(nodes) == len(set(nodes))  # "BatchNormalization_2" is taken: the unnamed BN got another


# ------------------------------------------------------------------------------ the passes


def test_random_plans_apply_exactly_twice_in_a_row() -> None:
    """Plans on the hostile model, then on the pruned result (names the first run created exist)."""
    model = normalize(hostile_model())
    for seed in range(3):
        current = model
        for round_ in range(2):
            analysis = analyze(current, {INPUT: SHAPE})
            plan = random_plan(analysis, seed=seed + 10 * round_, fraction=0.5, branch_fraction=0.5 * (seed == 1),
                               empty_fraction=0.5 * (seed == 2))
            pruned = apply_plan(current, plan, {INPUT: SHAPE}, analysis=analysis)
            _assert_unique_names(pruned)
            assert [v.name for v in pruned.graph.input] == [INPUT] and [v.name for v in pruned.graph.output] == [OUTPUT]
            expected = run(masked_reference(current, plan, analysis), _feeds())[0]
            np.testing.assert_allclose(run(pruned, _feeds())[0], expected, atol=1e-5, rtol=1e-4)
            inits = {i.name for i in pruned.graph.initializer}
            # the Reshape target's edit: 'reshape_1_pruned' is the user's, then ours from round 1
            assert {"reshape_1_pruned", f"reshape_1_pruned_{round_ + 1}"} <= inits
            current = pruned


def _renamed(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*model.graph.output, *model.graph.value_info):
        value.name = new if value.name == old else value.name
    return model


def test_removed_branches_get_fresh_constant_and_output_names() -> None:
    from onnxprune.passes.testing import check_exact, model_from_text
    from tests.support.models import chain

    # an emptied inner group turns the branch into a constant named after its output 'tb1'
    model = _renamed(model_from_text(chain(2)), "r", "tb1_constant")
    analysis = analyze(model)
    checked = check_exact(model, PruningPlan(kept={"wa1": (), "w0": (0, 3, 4, 7)}), analysis=analysis)
    _assert_unique_names(checked.pruned)
    assert _dims(checked.pruned, "tb1_constant_1") == (1, 4, 1, 1)
    # a dropped branch whose Add is the graph output: the output keeps its name, the Add's goes
    model = _renamed(model_from_text(chain(1, output_is_add=True)), "ra1", "a1_dropped")
    model.graph.node[0].name = "Add_6_dropped"  # what the unnamed Add ('Add_6') would be renamed to
    analysis = analyze(model)
    checked = check_exact(model, PruningPlan(dropped_branches=(analysis.residual_branches[0].id,)), analysis=analysis)
    _assert_unique_names(checked.pruned)
    assert [o.name for o in checked.pruned.graph.output] == ["a1"]
    nodes = [(n.op_type, n.name) for n in checked.pruned.graph.node]
    assert nodes == [("Conv", "Add_6_dropped"), ("Identity", "Add_6")]


def _fold_model() -> onnx.ModelProto:
    """A dead filter whose constant folds into a bias-less Conv and a MatMul that is a graph
    output, in a graph that already holds every name the fold would pick."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    w1[1], b1[1] = 0, 0.75  # channel 1 is the constant ReLU(0.75)
    inits = [nh.from_array(w1, "w1"), nh.from_array(b1, "head_folded_bias"),
             nh.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
             nh.from_array(rng.standard_normal((64, 3)).astype(np.float32), "w3")]
    nodes = [h.make_node("Conv", ["x", "w1", "head_folded_bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["y2_unfolded"], name="mm_folded_add"),
             h.make_node("Conv", ["y2_unfolded", "w2"], ["y1"], name="head"),
             h.make_node("Flatten", ["y2_unfolded"], ["mm_folded_bias"], name="flat"),
             h.make_node("MatMul", ["mm_folded_bias", "w3"], ["y2"], name="mm")]
    graph = h.make_graph(nodes, "fold", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 4, 4])],
                         [h.make_tensor_value_info("y1", T.FLOAT, [1, 2, 4, 4]),
                          h.make_tensor_value_info("y2", T.FLOAT, [1, 3])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _kill_channel(model: onnx.ModelProto, channel: int, shift: float) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for name, value in (("w1", 0.0), ("head_folded_bias", shift)):
        array = nh.to_array(inits[name]).copy()
        array[channel] = value
        inits[name].CopyFrom(nh.from_array(array, name))
    return out


def _dims(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    return next(tuple(i.dims) for i in model.graph.initializer if i.name == name)


def test_folded_biases_and_adds_get_fresh_names_in_every_run() -> None:
    model = _fold_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)}
    first = eliminate_dead_structure(model)
    assert _dims(first, "w1") == (3, 3, 3, 3)  # the dead filter is gone
    _assert_unique_names(first)
    for a, b in zip(run(model, feeds), run(first, feeds)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    before = graph_names(model.graph)
    created = graph_names(first.graph) - before
    assert created and all(n.endswith(("_1", "_folded")) for n in created)  # the plain names were taken
    # a second run on its own output: the names the first run created are taken too
    again = _kill_channel(first, 0, 0.5)
    second = eliminate_dead_structure(again)
    assert _dims(second, "w1") == (2, 3, 3, 3)
    _assert_unique_names(second)
    assert graph_names(second.graph) - graph_names(again.graph)  # new names, none reused
    for a, b in zip(run(again, feeds), run(second, feeds)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    assert [o.name for o in second.graph.output] == ["y1", "y2"]


def test_sparse_storage_node_names_do_not_collide() -> None:
    model = normalize(hostile_model())
    for init in model.graph.initializer:
        if init.name == "half":
            init.CopyFrom(nh.from_array(np.where(np.arange(216).reshape(8, 3, 3, 3) % 5 == 0,
                                                 nh.to_array(init), 0).astype(np.float32), "half"))
    sparse = to_sparse_storage(model)
    assert "half" not in {i.name for i in sparse.graph.initializer}
    _assert_unique_names(sparse)
    np.testing.assert_allclose(run(sparse, _feeds())[0], run(model, _feeds())[0], atol=1e-6)


# ------------------------------------------------------------------------------ every command


FAST = ["--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu", "--holdout", "0.25"]
METHODS = {
    "magnitude": ["--sparsity", "0.8", "--sparse-storage"],
    "lc": ["--sparsity", "0.5"],
    "ltp": ["--sparsity", "0.5"],
    "lagrangian": ["--target-macs", "0.5"],
    "bernoulli": ["--target-macs", "0.5"],
}


def _collapse_gate_off() -> list[str]:
    """One epoch on a random teacher may 'collapse' the tiny model; the default collapse gate
    (where the CLI has it) judges fidelity, which is not what these tests are about."""
    from onnxprune.cli.prune import command

    opts = {opt for param in command.params for opt in getattr(param, "opts", ())}
    return [arg for flag in ("--collapse-agreement", "--collapse-error") if flag in opts for arg in (flag, "0")]


@pytest.mark.parametrize("method", list(METHODS))
def test_prune_every_method_then_apply_inspect_and_bench(method, hostile_path, calib, tmp_path, capsys) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "run.json"
    code = main([str(hostile_path), "--method", method, *METHODS[method], "--calib", str(calib),
                 "--out", str(out), "--report", str(report), *FAST, *_collapse_gate_off()])
    assert code == 0, capsys.readouterr().err  # includes the torch vs onnxruntime verification
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    _assert_unique_names(pruned)
    assert [v.name for v in pruned.graph.input] == [INPUT] and [v.name for v in pruned.graph.output] == [OUTPUT]
    assert run(pruned, _feeds())[0].shape == (2, 4)
    original = normalize(hostile_model())
    onnx_names = graph_names(original.graph)
    data = json.loads(report.read_text())
    assert data["layers"] and {layer["name"] for layer in data["layers"]} <= onnx_names  # ONNX names, not torch
    plan = PruningPlan.from_json(data["plan"])
    analysis = analyze(original, {INPUT: SHAPE})
    assert set(plan.kept) <= {g.id for g in analysis.groups}
    if method in ("lagrangian", "bernoulli"):
        assert plan.kept or plan.dropped_branches
        # apply --plan: the run's plan on the original model, exact against the masked reference
        plan_path, applied = tmp_path / "plan.json", tmp_path / "applied.onnx"
        plan.save(plan_path)
        assert main(["apply", str(hostile_path), "--plan", str(plan_path), "--out", str(applied)]) == 0
        applied_model = onnx.load(str(applied))
        _assert_unique_names(applied_model)
        expected = run(masked_reference(original, plan, analysis), _feeds())[0]
        np.testing.assert_allclose(run(applied_model, _feeds())[0], expected, atol=1e-5, rtol=1e-4)
        capsys.readouterr()
        assert main(["inspect", str(hostile_path), "--plan", str(plan_path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["plan"]
        # an earlier onnxprune run's output pruned again: dead structure only, names stay unique
        again = tmp_path / "again.onnx"
        assert main(["apply", str(out), "--out", str(again)]) == 0
        _assert_unique_names(onnx.load(str(again)))
    capsys.readouterr()
    assert main(["bench", str(hostile_path), str(out), "--json", "--threads", "1", "--seconds", "0",
                 "--min-runs", "3", "--warmup", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) >= 2


def test_inspect_lists_onnx_names(hostile_path, capsys) -> None:
    assert main(["inspect", str(hostile_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["inputs"]) == [INPUT]
    assert {g["id"] for g in report["groups"]} == {"half", "type.ᚠ weight", "initializers"}
    assert [b["id"] for b in report["residual_branches"]] == ["half_branch"]  # Add 'half' vs group 'half'
    layers = {layer["node"] for layer in report["layers"]}
    assert layers == {"forward", "BatchNormalization_2", "MatMul_9", "initializers"}  # MatMul_9: unnamed
    assert main(["inspect", str(hostile_path)]) == 0  # the table prints non-ASCII names
    assert "type.ᚠ weight" in capsys.readouterr().out
