"""Bernoulli with --target-macs: the rounding (resource.refine_to_band: on small layers one block of
8 channels is a large share of the model, and the greedy fill of select_to_budget stops far
under the target; the kept counts are moved into the band [0.99 T, T] where that is reachable,
keeping the largest theta sum among the selections in the band), and the pace (the strength
controller's MACs level tapers from the start to the target), and the settle phase (the
parameters reach 0 or 1 before rounding)."""

from __future__ import annotations

import functools

import onnx
import pytest
import torch

from onnxprune.importing.importer import import_model
from onnxprune.methods._support.resource import Resource, Term, refine_to_band, select_to_budget, terms_from_analysis
from onnxprune.methods.bernoulli import Bernoulli
from onnxprune.passes.groups import analyze
from tests.support.structured import SAMPLES, SHAPES, run


@functools.lru_cache(maxsize=None)
def _resource(name: str) -> Resource:
    imported = import_model(onnx.load(str(SAMPLES / f"{name}.onnx")), SHAPES)
    analysis = analyze(imported.onnx_model, SHAPES)
    groups = {g.id: g.size for g in analysis.groups if g.prunable and g.size > 1}
    return Resource(terms_from_analysis(analysis, imported.onnx_model), groups)


def _counts(masks):
    return {g: int(m.sum()) for g, m in masks.items()}


@pytest.mark.parametrize("exhaustive", [100_000, 0])  # every combination of counts / block moves
def test_vgg_counts_move_into_the_band_under_the_target(exhaustive):
    """vgg's groups have 16, 16, 32, 32, 64 channels: for 0.25 the greedy fill can land at
    0.2095 of the MACs (-16%); the refined counts land in [0.2475, 0.25]."""
    r = _resource("vgg")
    target = 0.25 * r.total_macs
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # the first draw of scores whose greedy fill misses by more than 3%
        scores = {g: torch.rand(n, generator=generator) for g, n in r.sizes.items()}
        greedy = select_to_budget(scores, r, target, multiple=8)
        if r.hard(greedy) < 0.97 * target:
            break
    assert r.hard(greedy) < 0.97 * target  # what the refinement is for
    refined = refine_to_band(scores, r, target, greedy, multiple=8, exhaustive=exhaustive)
    assert 0.99 * target <= r.hard(refined) <= target
    for g, m in refined.items():  # multiples of 8, the top-scored units of each group
        k = int(m.sum())
        assert k % 8 == 0 and k >= 8
        if not bool(m.all()):
            assert float(scores[g][m].min()) >= float(scores[g][~m].max())


def test_a_selection_already_in_the_band_is_left_alone():
    r = _resource("mobilenet")
    torch.manual_seed(1)
    scores = {g: torch.rand(n) for g, n in r.sizes.items()}
    greedy = select_to_budget(scores, r, 0.5 * r.total_macs, multiple=8)
    assert r.hard(greedy) >= 0.99 * 0.5 * r.total_macs
    refined = refine_to_band(scores, r, 0.5 * r.total_macs, greedy, multiple=8)
    assert all(torch.equal(refined[g], greedy[g].cpu()) for g in greedy)


def test_in_the_band_the_largest_score_sum_wins():
    """Two 16-channel groups of equal cost feeding one output: 8 + 16 channels is the only count
    pair in the band for a target of 24/32; the group with the higher scores keeps 16."""
    terms = [Term(macs=16.0, inputs=(("A", 0, 16, 1),)), Term(macs=16.0, inputs=(("B", 0, 16, 1),))]
    r = Resource(terms, {"A": 16, "B": 16})
    scores = {"A": torch.full((16,), 0.3), "B": torch.full((16,), 0.7)}
    start = {"A": torch.arange(16) < 8, "B": torch.arange(16) < 8}  # 16 of 32 MACs: far under
    refined = refine_to_band(scores, r, 24.0, start, multiple=8)
    assert _counts(refined) == {"A": 8, "B": 16}


@pytest.fixture(scope="module")
def vgg_quarter():
    method = Bernoulli(target_macs="0.25")
    return method, run("vgg", method, epochs=9)


def test_lands_within_three_percent_of_the_target_on_the_vgg_sample(vgg_quarter):
    """benchmarks/bernoulli_targets.py: 0.2095 at 0.25 before the refinement (-16%), 0.2493 after."""
    _, result = vgg_quarter
    assert abs(result["macs"] / (0.25 * result["macs0"]) - 1) <= 0.03


def test_the_pace_limits_the_expected_macs_drop_in_the_first_epoch(vgg_quarter):
    """Aimed at 0.25 from the first step, the strength took the vgg sample's expected MACs to 0.37
    within epoch 1; with the level tapering over 3 epochs they stay above 0.6 (level 0.75)."""
    paced, result = vgg_quarter
    assert paced.pace_steps == 3 * result["ctx"].steps_per_epoch
    straight = run("vgg", Bernoulli(target_macs="0.25", pace_epochs=0), epochs=9)
    first = {"paced": result["ctx"].history[0]["macs_expected_min"],
             "straight": straight["ctx"].history[0]["macs_expected_min"]}
    assert first["paced"] > 0.55 and first["paced"] > first["straight"] + 0.15, first


class _NoSettle(Bernoulli):
    settle_share = 0.0


def test_the_settle_phase_takes_the_parameters_to_zero_or_one(vgg_quarter):
    """The last half of the pruning epochs step every undecided parameter against the sign of its
    slope: on the vgg sample at 0.25 all 160 are decided before rounding; without it 78%."""
    settled, _ = vgg_quarter
    plain = _NoSettle(target_macs="0.25")
    run("vgg", plain, epochs=9)
    assert settled.decided_fraction >= 0.9 and settled.decided_fraction > plain.decided_fraction + 0.05, (
        settled.decided_fraction, plain.decided_fraction)
