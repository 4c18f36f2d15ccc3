"""The differentiable resource: exact on 0/1 masks, bilinear, the exact expectation under
Bernoulli gates, branch factors; the MAC target parser; selection to a budget."""

from __future__ import annotations

import itertools

import pytest
import torch

from onnxprune.methods._support.resource import (
    Resource,
    TargetError,
    Term,
    parse_target,
    round_counts,
    select_to_budget,
)

# conv1: image(1) -> A(4) 100 MACs per (in, out) channel pair; conv2: A(4) -> B(3);
# dw: depthwise on B; fc: flatten of B (2 features per channel) -> 10 outputs, inside branch "blk"
TERMS = [
    Term(macs=400, params=40, outputs=(("A", 0, 4, 1),)),
    Term(macs=1200, params=120, inputs=(("A", 0, 4, 1),), outputs=(("B", 0, 3, 1),)),
    Term(macs=30, params=3, inputs=(("B", 0, 3, 1),), outputs=(("B", 0, 3, 1),), depthwise=True),
    Term(macs=60, params=60, inputs=(("B", 0, 3, 2),), outputs=(("C", 0, 10, 1),), branches=("blk",)),
]
GROUPS = {"A": 4, "B": 3}


def brute_force(mask_a, mask_b, keep_blk=1):
    ka, kb = sum(mask_a), sum(mask_b)
    return 400 * ka / 4 + 1200 * ka / 4 * kb / 3 + 30 * kb / 3 + 60 * kb / 3 * keep_blk


def test_hard_masks_match_brute_force_count():
    r = Resource(TERMS, GROUPS, ["blk"])
    assert r.total_macs == 1690 and r.total_params == 223
    for mask_a in itertools.product([0, 1], repeat=4):
        for mask_b in itertools.product([0, 1], repeat=3):
            got = r.hard({"A": torch.tensor(mask_a), "B": torch.tensor(mask_b)})
            assert got == pytest.approx(brute_force(mask_a, mask_b))
    assert r.hard({}, ["blk"]) == pytest.approx(1690 - 60)


def test_gradient_is_bilinear_in_neighbouring_gates():
    r = Resource(TERMS, GROUPS)
    a = torch.full((4,), 0.5, requires_grad=True)
    b = torch.full((3,), 0.5, requires_grad=True)
    r({"A": a, "B": b}).backward()
    # dR/da_c = 400/4 + 1200/4 * f_B ; f_B = 0.5
    torch.testing.assert_close(a.grad, torch.full((4,), 100 + 300 * 0.5))
    # dR/db_c = 1200/3 * f_A + 30/3 + 60/3 ; f_A = 0.5
    torch.testing.assert_close(b.grad, torch.full((3,), 400 * 0.5 + 10 + 20))


def test_resource_at_theta_is_the_expected_cost_of_bernoulli_masks():
    r = Resource(TERMS, GROUPS, ["blk"])
    theta_a, theta_b, phi = torch.tensor([0.9, 0.1, 0.5, 0.3]), torch.tensor([0.7, 0.2, 0.6]), 0.4
    expected = 0.0
    for mask_a in itertools.product([0, 1], repeat=4):
        pa = torch.prod(torch.where(torch.tensor(mask_a).bool(), theta_a, 1 - theta_a))
        for mask_b in itertools.product([0, 1], repeat=3):
            pb = torch.prod(torch.where(torch.tensor(mask_b).bool(), theta_b, 1 - theta_b))
            for keep in (0, 1):
                p = pa * pb * (phi if keep else 1 - phi)
                expected += float(p) * brute_force(mask_a, mask_b, keep)
    got = float(r({"A": theta_a, "B": theta_b}, {"blk": torch.tensor(phi)}))
    assert got == pytest.approx(expected, rel=1e-6)  # float32 thetas


@pytest.mark.parametrize("text,value", [("0.5", 845.0), ("1.2K", 1200.0), ("1e-3K", 1.0), (".25", 422.5),
                                        ("1", 1690.0), ("1.69K", 1690.0)])
def test_parse_target(text, value):
    assert parse_target(text, 1690) == pytest.approx(value)


# a bare number is a fraction in (0, 1]: 1.5 and 1e3 are neither read as MAC counts nor clamped
@pytest.mark.parametrize("text", ["half", "2G", "0", "-0.3", "1.5", "1e3", "1690", "0K"])
def test_parse_target_rejects(text):
    with pytest.raises(TargetError, match="--target-macs"):
        parse_target(text, 1690)


def test_parse_target_refuses_below_the_floor_naming_it():
    assert parse_target("0.1", 1690, floor=169) == pytest.approx(169)
    with pytest.raises(TargetError, match=r"below the smallest model this method can reach: 200 MACs"):
        parse_target("0.1", 1690, floor=200)


@pytest.mark.parametrize("target,kept_a,kept_b,cost", [
    (1690.0, [1, 1, 1, 1], [1, 1, 1], 1690.0),
    (1500.0, [1, 0, 1, 1], [1, 1, 1], 1290.0),   # drop order: A1 .1, A3 .2, B0 .3, B2 .6, A2 .8
    (900.0, [1, 0, 1, 0], [1, 1, 1], 890.0),
    (660.0, [1, 0, 1, 0], [0, 1, 1], 660.0),
    (400.0, [1, 0, 0, 0], [0, 1, 0], 230.0),
    (100.0, [1, 0, 0, 0], [0, 1, 0], 230.0),     # each group keeps its best channel
])
def test_select_to_budget_drops_lowest_scores_until_the_target_is_met(target, kept_a, kept_b, cost):
    r = Resource(TERMS, GROUPS)
    scores = {"A": torch.tensor([0.9, 0.1, 0.8, 0.2]), "B": torch.tensor([0.3, 0.95, 0.6])}
    masks = select_to_budget(scores, r, target)
    assert masks["A"].int().tolist() == kept_a and masks["B"].int().tolist() == kept_b
    assert r.hard(masks) == pytest.approx(cost)


def test_round_counts_to_a_channel_multiple_keeps_the_top_scores():
    scores = {"big": torch.arange(32.0), "small": torch.arange(6.0)}
    masks = {"big": scores["big"] >= 19, "small": scores["small"] >= 4}  # 13 and 2 kept
    rounded = round_counts(scores, masks, 8)
    assert int(rounded["big"].sum()) == 16 and bool(rounded["big"][16:].all())  # 13 -> 16, top scores
    assert torch.equal(rounded["small"], masks["small"])  # a group of <= 8 channels is left alone
    allowed = {"big": scores["big"] >= 18, "small": torch.ones(6, dtype=torch.bool)}  # only 14 allowed
    assert int(round_counts(scores, masks, 8, allowed)["big"].sum()) == 8  # cannot round up: rounds down


def test_select_to_budget_with_a_channel_multiple_meets_the_target():
    terms = [Term(macs=64 * 40, inputs=(("A", 0, 64, 1),), outputs=(("B", 0, 40, 1),)),
             Term(macs=40 * 10, inputs=(("B", 0, 40, 1),))]
    r = Resource(terms, {"A": 64, "B": 40})
    torch.manual_seed(0)
    scores = {"A": torch.rand(64), "B": torch.rand(40)}
    for target in (0.8, 0.5, 0.3):
        masks = select_to_budget(scores, r, target * r.total_macs, multiple=8)
        assert all(int(m.sum()) % 8 == 0 for m in masks.values())
        assert target * 0.8 * r.total_macs < r.hard(masks) <= target * r.total_macs


def test_select_to_budget_never_keeps_removed_channels_and_keeps_multiples():
    terms = [Term(macs=64 * 40, inputs=(("A", 0, 64, 1),), outputs=(("B", 0, 40, 1),)),
             Term(macs=40 * 10, inputs=(("B", 0, 40, 1),))]
    r = Resource(terms, {"A": 64, "B": 40})
    scores = {"A": torch.linspace(0, 1, 64), "B": torch.linspace(0, 1, 40)}
    allowed = {"A": torch.arange(64) >= 51, "B": torch.arange(40) >= 3}  # 13 and 37 units left
    masks = select_to_budget(scores, r, 0.99 * r.total_macs, multiple=8, allowed=allowed)
    for g in masks:
        assert not bool((masks[g] & ~allowed[g]).any()) and int(masks[g].sum()) % 8 == 0


def test_rounding_multiples_follow_the_elements_a_unit_spans():
    """A group whose unit spans >= multiple elements (a head of 64 columns) is not rounded; a
    group of single channels rounds to the multiple (10 of 12 heads stay 10; 21 channels -> 24)."""
    terms = [Term(macs=100.0, params=10.0, outputs=(("heads", 0, 12, 64),)),
             Term(macs=50.0, params=10.0, inputs=(("heads", 0, 12, 64),)),
             # QK^T, no weights: one head is one element of the scores' heads axis; the projections decide
             Term(macs=10.0, inputs=(("heads", 0, 12, 1),), outputs=(("heads", 0, 12, 1),)),
             Term(macs=80.0, params=10.0, outputs=(("conv", 0, 40, 1),))]
    resource = Resource(terms, {"heads": 12, "conv": 40})
    assert resource.multiples(8) == {"heads": 1, "conv": 8}
    masks = {"heads": torch.arange(12) < 10, "conv": torch.arange(40) < 21}
    scores = {"heads": torch.arange(12.0), "conv": torch.arange(40.0)}
    rounded = round_counts(scores, masks, resource.multiples(8))
    assert {k: int(v.sum()) for k, v in rounded.items()} == {"heads": 10, "conv": 24}
