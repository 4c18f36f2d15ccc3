"""LC's C-step projections against brute force on small vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from onnxprune.methods._support import projections as P


def _split(v: np.ndarray) -> dict[str, torch.Tensor]:
    # three "layers" of different shapes holding one vector
    t = torch.tensor(v, dtype=torch.float32)
    return {"a": t[:3].reshape(3, 1), "b": t[3:5].clone(), "c": t[5:].reshape(1, -1)}


def _cat(d: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([x.reshape(-1).numpy() for x in d.values()])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kappa", [0, 1, 3, 5])
def test_l0_constraint_is_best_kappa_subset(seed, kappa):
    w = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    best = min(
        (np.sum(np.delete(w, list(s)) ** 2), s) for s in itertools.combinations(range(8), kappa)
    )[0]
    theta = _cat(P.l0_constraint(_split(w), kappa))
    assert np.count_nonzero(theta) <= kappa
    assert np.sum((w - theta) ** 2) == pytest.approx(best, rel=1e-6, abs=1e-7)


def test_topk_is_joint_across_tensors_not_per_tensor():
    # all large values sit in one tensor: a per-layer top-k would keep some of "b"
    d = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0]), "b": torch.tensor([0.1, 0.2])}
    masks = P.global_topk_mask(d, 4)
    assert masks["a"].all() and not masks["b"].any()


def test_topk_ties_are_stable():
    d = {"a": torch.ones(3), "b": torch.ones(3)}
    masks = P.global_topk_mask(d, 2)
    assert masks["a"].tolist() == [True, True, False] and not masks["b"].any()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("radius", [0.1, 1.0, 2.5, 100.0])
def test_l1_ball_projection_matches_bisection_and_beats_feasible_points(seed, radius):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=8).astype(np.float64)
    theta = _cat(P.l1_ball(_split(w), radius)).astype(np.float64)
    assert np.abs(theta).sum() <= radius * (1 + 1e-5)
    # independent reference: bisection on the soft threshold
    if np.abs(w).sum() <= radius:
        ref = w
    else:
        lo, hi = 0.0, np.abs(w).max()
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.clip(np.abs(w) - mid, 0, None).sum() > radius else (lo, mid)
        ref = np.sign(w) * np.clip(np.abs(w) - hi, 0, None)
    np.testing.assert_allclose(theta, ref, atol=1e-5)
    # and no random feasible point is closer
    cand = rng.normal(size=(2000, 8))
    cand = cand / np.abs(cand).sum(1, keepdims=True) * radius * rng.uniform(0, 1, (2000, 1))
    assert np.sum((w - theta) ** 2) <= np.min(np.sum((w - cand) ** 2, 1)) + 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_l0_penalty_minimizes_per_coordinate(seed):
    rng = np.random.default_rng(seed)
    w, alpha, mu = rng.normal(size=8), 0.05, 1.3
    theta = _cat(P.l0_penalty(_split(w), alpha, mu))
    # brute force: each coordinate is either 0 or w_i (any other value only adds distance)
    for wi, ti in zip(w, theta):
        costs = {0.0: mu / 2 * wi**2, wi: alpha}
        assert costs[min(costs, key=costs.get)] == pytest.approx(
            alpha * (ti != 0) + mu / 2 * (wi - ti) ** 2, rel=1e-5
        )


@pytest.mark.parametrize("seed", range(5))
def test_l1_penalty_minimizes_on_a_grid(seed):
    rng = np.random.default_rng(seed)
    w, alpha, mu = rng.normal(size=8), 0.3, 0.9
    theta = _cat(P.l1_penalty(_split(w), alpha, mu))
    grid = np.linspace(-4, 4, 80001)
    for wi, ti in zip(w, theta):
        obj = alpha * np.abs(grid) + mu / 2 * (wi - grid) ** 2
        assert abs(ti - grid[np.argmin(obj)]) < 2e-4


def test_group_l0_keeps_largest_norm_groups_across_tensors():
    w1 = torch.tensor([[3.0, 0.0], [0.1, 0.1], [1.0, 1.0]])  # rows = output channels
    b1 = torch.tensor([0.0, 0.0, 2.0])
    w2 = torch.tensor([[0.5, 0.5]])
    groups = [
        [("w1", 0, 0), ("b1", 0, 0)],  # norm² 9
        [("w1", 0, 1), ("b1", 0, 1)],  # 0.02
        [("w1", 0, 2), ("b1", 0, 2)],  # 6
        [("w2", 0, 0)],  # 0.5
    ]
    # brute force: the best 2-subset maximizes the kept squared norm
    sq = P.group_sq_norms({"w1": w1, "b1": b1, "w2": w2}, groups).tolist()
    best = max(itertools.combinations(range(4), 2), key=lambda s: sum(sq[i] for i in s))
    out = P.group_l0_constraint({"w1": w1, "b1": b1, "w2": w2}, groups, 2)
    assert set(best) == {0, 2}
    assert out["w1"][1].abs().sum() == 0 and out["b1"][1] == 0 and out["w2"].abs().sum() == 0
    assert torch.equal(out["w1"][0], w1[0]) and torch.equal(out["w1"][2], w1[2])


def _topk_by_stable_sort(tensors, kappa):
    """The reference: a stable descending sort of the concatenated |w| (ties: flat order)."""
    flat = torch.cat([t.reshape(-1) for t in tensors.values()]).abs()
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:kappa]] = True
    out, offset = {}, 0
    for name, t in tensors.items():
        out[name] = keep[offset:offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("chunk", [5, 1 << 24])
def test_topk_equals_a_stable_sort_with_many_ties(monkeypatch, dtype, chunk):
    # integer-valued weights (many ties, zeros among them, as after a prune) and Gaussian ones;
    # a tiny tie chunk walks the chunked tie scan across tensor and chunk boundaries
    monkeypatch.setattr(P, "_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        shapes = [tuple(int(v) for v in torch.randint(1, 9, (2,), generator=generator)) for _ in range(3)]
        make = (lambda s: torch.randint(-3, 4, s, generator=generator).float()) if trial % 2 else \
            (lambda s: torch.randn(s, generator=generator))
        tensors = {f"t{i}": make(s).to(dtype) for i, s in enumerate(shapes)}
        n = sum(t.numel() for t in tensors.values())
        for kappa in {0, 1, n // 3, n // 2, n - 1, n, n + 3}:
            got, want = P.global_topk_mask(tensors, kappa), _topk_by_stable_sort(tensors, min(kappa, n))
            for name, t in tensors.items():
                assert got[name].dtype == torch.bool and got[name].shape == t.shape
                assert torch.equal(got[name], want[name]), (trial, kappa, name)
