"""Property test: random graphs mixing residuals, concat, depthwise, squeeze-excite, flatten->Gemm.

For any such graph and any random plan (half the channels of each prunable group, some
residual branches dropped, some groups inside branches emptied), the rewritten model passes the
full checker, equals the masked reference on onnxruntime (atol 1e-5, rtol 1e-4), and has the
MACs the analysis predicted.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.passes import analyze
from onnxprune.passes.testing import BLOCKS, check_exact, random_graph, random_plan

# benchmarks/passes_property_long.py raises these for a long run
EXAMPLES = int(os.environ.get("ONNXPRUNE_PROPERTY_EXAMPLES", "200"))
RANDOMIZE = os.environ.get("ONNXPRUNE_PROPERTY_RANDOM", "") == "1"

graphs = st.fixed_dictionaries({
    "blocks": st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    "widths": st.lists(st.integers(2, 8), min_size=6, max_size=6),
    "flatten": st.booleans(),
    "hidden": st.integers(2, 12),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=not RANDOMIZE,
          database=None)
@given(spec=graphs, plan_seed=st.integers(0, 2**16), fraction=st.sampled_from([0.25, 0.5, 0.75]),
       branch_fraction=st.sampled_from([0.0, 0.5]), empty_fraction=st.sampled_from([0.0, 0.3]))
def test_random_graph_random_plan_is_exact(spec, plan_seed, fraction, branch_fraction, empty_fraction) -> None:
    model = random_graph(**spec)
    analysis = analyze(model)
    assert analysis.prunable_groups, "the first conv's group is always prunable"
    plan = random_plan(analysis, plan_seed, fraction, branch_fraction, empty_fraction)
    checked = check_exact(model, plan, analysis=analysis, seed=plan_seed)
    assert checked.macs == checked.predicted_macs
    removes = plan.dropped_branches or any(len(k) < analysis.group(g).size for g, k in plan.kept.items())
    assert checked.macs < analysis.total_macs if removes else checked.macs == analysis.total_macs


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=not RANDOMIZE, database=None)
@given(spec=graphs, zero_seed=st.integers(0, 2**16))
def test_dead_structure_elimination_is_exact(spec, zero_seed) -> None:
    """Zero random producer filters; dead-structure elimination shrinks the model, outputs unchanged."""
    import numpy as np
    from onnx import numpy_helper

    from onnxprune.graph.macs import count_macs
    from onnxprune.passes import eliminate_dead_structure
    from onnxprune.passes.testing import random_feeds, run

    model = random_graph(**spec)
    analysis = analyze(model)
    rng = np.random.default_rng(zero_seed)
    inits = {init.name: init for init in model.graph.initializer}
    for group in analysis.prunable_groups:
        dead = rng.random(group.size) < 0.4
        for test in group.dead_tests:
            array = numpy_helper.to_array(inits[test.name]).copy()
            np.moveaxis(array, test.axis, 0)[test.start:test.stop][dead] = 0
            inits[test.name].CopyFrom(numpy_helper.from_array(array, test.name))
    smaller = eliminate_dead_structure(model, analysis.input_shapes)
    feeds = random_feeds(model, analysis.input_shapes, zero_seed)
    np.testing.assert_allclose(run(smaller, feeds)[0], run(model, feeds)[0], atol=1e-5, rtol=1e-4)
    assert count_macs(smaller).total_macs <= count_macs(model).total_macs
