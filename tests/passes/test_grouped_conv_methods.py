"""Grouped convolutions in every structured method (issue 14 item 4).

A ResNeXt-style chain (a plain conv feeding a ``groups=2`` 3x3 conv, a 1x1 conv, then a
``groups=4`` 3x3 conv; a grouped conv's outputs are prunable in equal runs, its inputs frozen) is pruned end to end by lagrangian, bernoulli, and lc and ltp with ``--granularity
channel``, one short epoch to half the MACs: every run yields a verified model (onnxruntime vs
the trained torch model inside the pipeline), and in the written model every grouped conv
keeps equally many channels in each conv group. Before this, the methods' selections ignored
the conv groups (a ``group=2`` conv kept ``[4, 5, 8, 10..14]``) and the passes refused the plan
after the whole run.

Also: the rounding itself (``methods/_support/chunks.py``), and the pre-training plan check
(``onnxprune/run/plan_check.py``): the smallest legal width of every group is one channel per
conv group and applies, so this model is not refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxprune import api
from onnxprune.importing.normalize import normalize
from onnxprune.methods._support.chunks import equal_per_chunk, minimal_kept, round_plan
from onnxprune.passes import PruningPlan, analyze
from onnxprune.passes.testing import check_exact
from onnxprune.run.plan_check import check_plan_shapes, extreme_plans

SIZE = 12


class Grouped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        block = lambda cin, cout, k, g: torch.nn.Sequential(  # noqa: E731
            torch.nn.Conv2d(cin, cout, k, padding=k // 2, groups=g, bias=False), torch.nn.BatchNorm2d(cout),
            torch.nn.ReLU())
        self.features = torch.nn.Sequential(block(3, 16, 3, 1), block(16, 16, 3, 2), block(16, 32, 1, 1),
                                            block(32, 32, 3, 4))
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory) -> tuple[str, str]:
    torch.manual_seed(0)
    model = Grouped()
    with torch.no_grad():  # measured BatchNorm statistics: a model whose outputs depend on its input
        model.train()
        for _ in range(5):
            model(torch.randn(32, 3, SIZE, SIZE))
    model.eval()
    folder = tmp_path_factory.mktemp("grouped")
    path = folder / "grouped.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
    calib = folder / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((96, 3, SIZE, SIZE)).astype(np.float32))
    return str(path), str(calib)


def test_rounding_up_per_conv_group() -> None:
    # the example: a group=2 conv of 16 channels kept [4, 5, 8, 10..14]
    assert equal_per_chunk([4, 5, 8, 10, 11, 12, 13, 14], 16, 2) == (0, 1, 2, 3, 4, 5, 8, 10, 11, 12, 13, 14)
    assert equal_per_chunk([0, 1, 9], 16, 2, scores=np.arange(16)) == (0, 1, 9, 15)  # best-scored added
    assert equal_per_chunk([3, 7], 8, 1) == (3, 7)  # no conv groups: unchanged
    assert minimal_kept(16, 4) == (0, 4, 8, 12)
    plan = round_plan(PruningPlan(kept={"a": (4, 5, 8), "b": (1,)}), {"a": 2}, {"a": 16, "b": 4})
    assert plan.kept["a"] == (4, 5, 8, 9) and plan.kept["b"] == (1,)
    assert plan.meta["rounded_up_per_conv_group"] == ["a"]


def test_an_unequal_selection_rounded_up_stays_exact(grouped_model) -> None:
    """Rounded up per conv group, a selection the passes refused applies and equals the masked model."""
    model = normalize(onnx.load(grouped_model[0]))
    analysis = analyze(model)
    chunked = [g for g in analysis.groups if g.prunable and g.chunks > 1]
    assert chunked, [(g.id, g.chunks, g.reason) for g in analysis.groups]
    rng = np.random.default_rng(0)
    raw = {g.id: tuple(sorted(rng.choice(g.size, g.size // 2 + 1, replace=False))) for g in chunked}
    rounded = round_plan(PruningPlan(kept=raw), {g.id: g.chunks for g in chunked}, {g.id: g.size for g in chunked})
    checked = check_exact(model, rounded, analysis=analysis)  # checker, masked reference, predicted MACs
    assert checked.macs == checked.predicted_macs


def test_the_pre_training_check_accepts_the_smallest_widths(grouped_model) -> None:
    model = normalize(onnx.load(grouped_model[0]))
    analysis = analyze(model)
    (_, smallest), _ = extreme_plans(analysis)
    for group in analysis.groups:
        if group.prunable and group.size > 1:
            assert len(smallest.kept[group.id]) == max(group.chunks, 1)
    check_plan_shapes("lagrangian", model, analysis, analysis.input_shapes)


METHODS = [
    ("lagrangian", {"target_macs": "0.5"}),
    ("bernoulli", {"target_macs": "0.5"}),
    ("lc", {"granularity": "channel", "sparsity": 0.5}),
    ("ltp", {"granularity": "channel", "sparsity": 0.5}),
]


@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_every_structured_method_keeps_equal_counts_per_conv_group(grouped_model, tmp_path, method, options) -> None:
    path, calib = grouped_model
    out = tmp_path / "small.onnx"
    result = api.prune(path, out, method=method, calib=calib, epochs=1, batch_size=32, lr=1e-3,
                       latency_seconds=0, collapse_agreement=0, **options)
    assert out.exists()  # verified by the pipeline: checker + onnxruntime vs the trained torch model
    pruned = onnx.load(str(out))
    weights = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    grouped = [n for n in pruned.graph.node if n.op_type == "Conv"
               and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    assert len(grouped) == 2
    for node in grouped:  # the weight's shape is [out, in / group, k, k]: out must split evenly
        groups = next(a.i for a in node.attribute if a.name == "group")
        assert weights[node.input[1]].shape[0] % groups == 0
    assert result.report["macs"]["after"] < result.report["macs"]["before"]
