"""Differentiable MAC (and parameter) resource of a gated network.

Every MAC-bearing node t contributes ``macs_t`` at full width. Its input and output channel
axes are made of pieces of channel groups (a Concat input has several; a Flatten spreads each
channel over ``block`` features). With gates ``g`` (1 = kept) the kept fraction of a side is

    f(t) = sum_{pieces (G, a:b, block)} block * sum_{c in a:b} g_{G,c} / C(t)

(a group we do not gate counts as kept; a side with no pieces is not pruned: f = 1), and with
``b_B`` the keep value of residual branch B the resource is the multilinear function

    R(g, b) = sum_t macs_t * f_in(t) * f_out(t) * prod_{B contains t} b_B

(a depthwise node has only ``f_out``: its input and output channels are the same). R is bilinear
in neighbouring layers' gates, so ``dR/dg`` charges a channel for the MACs it enables on both
sides. With independent Bernoulli gates ``xi ~ Bern(theta)``, R evaluated at ``theta`` is the
exact expected cost (in and out are different groups, so the expectation factorizes).
Parameters use the same form with ``params_t`` (the node's initializer elements).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Sequence

import torch

from onnxprune.errors import OnnxPruneError


class TargetError(OnnxPruneError):
    """A ``--target-macs`` the method cannot take (one line, naming the option)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"--target-macs {message}")


_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


Piece = tuple[str, int, int, int]  # (group id, first channel, stop channel, elements per channel)


@dataclasses.dataclass(frozen=True)
class Term:
    """One MAC-bearing node: its input/output channel axes as pieces of groups (empty: not
    pruned on that side), and the residual branches that contain it."""

    macs: float
    params: float = 0.0
    inputs: tuple[Piece, ...] = ()
    outputs: tuple[Piece, ...] = ()
    depthwise: bool = False
    branches: tuple[str, ...] = ()


class _Side:
    """``f_t = const_t + sum_c w_tc * g_c``: a side's kept fraction per term, linear in the gates."""

    def __init__(self, pieces_per_term: Sequence[tuple[Piece, ...]], offsets: Mapping[str, int]) -> None:
        rows, cols, weights, const = [], [], [], []
        for t, pieces in enumerate(pieces_per_term):
            total = sum(block * (stop - start) for _, start, stop, block in pieces)
            fixed = 0.0 if pieces else 1.0
            for group, start, stop, block in pieces:
                if group in offsets:
                    rows += [t] * (stop - start)
                    cols += range(offsets[group] + start, offsets[group] + stop)
                    weights += [block / total] * (stop - start)
                else:  # a group we do not gate keeps all its channels
                    fixed += block * (stop - start) / total
            const.append(fixed)
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.cols = torch.tensor(cols, dtype=torch.long)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.const = torch.tensor(const, dtype=torch.float64)

    def __call__(self, gvec: torch.Tensor) -> torch.Tensor:
        return self.const.index_add(0, self.rows, gvec[self.cols] * self.weights)


class Resource:
    """``R(gates, branch_keep)`` vectorized over terms; gated groups and branches by id."""

    def __init__(self, terms: Sequence[Term], groups: Mapping[str, int], branches: Sequence[str] = ()):
        self.group_ids = list(groups)
        self.sizes = dict(groups)
        offsets, total = {}, 0
        for g in self.group_ids:
            offsets[g], total = total, total + groups[g]
        self.branch_ids = list(branches)
        bidx = {b: i for i, b in enumerate(self.branch_ids)}
        one_b = len(self.branch_ids)  # index of the constant 1
        depth = max([len(t.branches) for t in terms] + [1])
        brs = []
        for t in terms:
            row = [bidx.get(b, one_b) for b in t.branches]
            brs.append(row + [one_b] * (depth - len(row)))
        self.ins = _Side([() if t.depthwise else t.inputs for t in terms], offsets)
        self.outs = _Side([t.outputs for t in terms], offsets)
        self.brs = torch.tensor(brs, dtype=torch.long).reshape(len(terms), depth)
        self.macs = torch.tensor([float(t.macs) for t in terms], dtype=torch.float64)
        self.params = torch.tensor([float(t.params) for t in terms], dtype=torch.float64)
        self.total_macs = float(self.macs.sum())
        self.total_params = float(self.params.sum())
        # the fewest tensor elements one unit of a group spans in a term with weights (1 for conv
        # channels, d for an attention head): the rounding to runtime-friendly counts is about
        # the widths of weighted ops. The weightless QK^T and AV terms see a head as 1 element of
        # the heads axis; counting them rounded 12 heads to 8 in every layer of MiniLM
        # (docs/text-calibration.md). A group in no weighted term takes every term.
        self.unit_elements = {g: 1 for g in self.group_ids}
        seen: dict[bool, dict[str, int]] = {True: {}, False: {}}  # by: the term has weights
        for t in terms:
            for group, _, _, block in (*t.inputs, *t.outputs):
                if group in self.unit_elements:
                    side = seen[t.params > 0]
                    side[group] = min(side.get(group, block), block)
        seen = {**seen[False], **seen[True]}
        self.unit_elements.update(seen)

    def multiples(self, multiple: int) -> dict[str, int]:
        """Per group, the count its kept units round to a multiple of: ``multiple`` for groups
        of single channels, 1 for groups whose unit already spans ``multiple`` elements or more
        (an attention head of d columns: rounding 12 heads to 8 would waste most of a layer)."""
        return {g: 1 if self.unit_elements[g] >= multiple else multiple for g in self.group_ids}

    def _gvec(self, gates: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [torch.ones(0, dtype=torch.float64)]
        for gid in self.group_ids:
            g = gates.get(gid)
            parts.append(torch.ones(self.sizes[gid], dtype=torch.float64) if g is None
                         else g.to(torch.float64).reshape(-1).cpu())
        return torch.cat(parts)

    def _keep(self, branch_keep: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        keep = branch_keep or {}
        parts = [torch.as_tensor(keep.get(b, 1.0)).to(torch.float64).reshape(()).cpu() for b in self.branch_ids]
        return torch.stack(parts + [torch.ones((), dtype=torch.float64)])

    def __call__(self, gates: Mapping[str, torch.Tensor], branch_keep: Mapping[str, torch.Tensor] | None = None,
                 *, weights: str = "macs") -> torch.Tensor:
        gvec = self._gvec(gates)
        per_term = self.ins(gvec) * self.outs(gvec) * self._keep(branch_keep)[self.brs].prod(dim=1)
        cost = self.macs if weights == "macs" else self.params
        return (cost * per_term).sum()

    def hard(self, masks: Mapping[str, torch.Tensor], dropped_branches: Sequence[str] = (), *, weights: str = "macs") -> float:
        """The cost of a 0/1 selection (kept channels per group, removed branches)."""
        keep = {b: torch.tensor(0.0) for b in dropped_branches}
        with torch.no_grad():
            return float(self({k: v.float() for k, v in masks.items()}, keep, weights=weights))


_TARGET_SYNTAX = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*")
TARGET_RULE = ("a bare number is a fraction of the original MACs in (0, 1] (0.5 = half); a count needs a unit: "
               "K, M, G or T (350M, 1.2G)")


def read_target(text: str | float) -> tuple[float, bool]:
    """(value, is_fraction) of a ``--target-macs`` text, or TargetError (the rule: TARGET_RULE)."""
    match = _TARGET_SYNTAX.fullmatch(str(text))
    if match is None:
        raise TargetError(f"{text!r}: expected a fraction like 0.5 or a count with a unit like 1.2G; "
                                 f"{TARGET_RULE}")
    value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    fraction = not match.group(2)
    if fraction and not 0 < value <= 1:
        hint = ""
        if value > 1:
            hint = (f"; for a count write it with a unit ({_with_unit(value)})" if value >= 1e3 else
                    f"; for a count write it with a unit ({match.group(1)}K, {match.group(1)}M, ...)")
        raise TargetError(f"{text!r}: a bare number is a fraction of the original MACs and must lie in "
                                 f"(0, 1]{hint}")
    if not value > 0:
        raise TargetError(f"{text!r}: expected a positive count of MACs")
    return value, fraction


def _with_unit(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}"


def parse_target(text: str | float | None, total: float, default: float | None = None,
                 floor: float | None = None) -> float:
    """``--target-macs`` as a MAC count: a bare number is a fraction of ``total`` in (0, 1]
    (``0.5``); a count needs a unit (``1.2G``, ``350M``, ``50K``). This is the one parser of the
    option (docs/errors.md, "Budgets"). ``floor``: the smallest MAC count the method can reach
    (:func:`smallest_reachable`); a target below it is refused, naming it."""
    if text is None:
        if default is None:
            raise TargetError("a MAC target is required")
        text = default
    value, fraction = read_target(text)
    macs = value * total if fraction else value
    if macs > total * (1 + 1e-9):
        raise TargetError(f"{text!r} is {_with_unit(macs)} MACs, more than the model's {_with_unit(total)}")
    if floor is not None and macs < floor * (1 - 1e-9):
        raise TargetError(f"{text!r} is {_with_unit(macs)} MACs ({macs / total:.3g} of {_with_unit(total)}), below the smallest "
            f"model this method can reach: {_with_unit(floor)} MACs (a fraction of {math.ceil(floor / total * 1e4) / 1e4:.4f}, "
            f"one kept channel block per layer)")
    return min(macs, total)


def smallest_reachable(resource: Resource, multiple: int = 1) -> float:
    """The MACs of the smallest selection a structured method can make: every gated group keeps
    one channel (``multiple`` channels when it has more than that, as :func:`round_counts`
    rounds), every gated residual branch removed."""
    masks, multiples = {}, resource.multiples(multiple)
    for gid in resource.group_ids:
        size, m = resource.sizes[gid], multiples[gid]
        mask = torch.zeros(size, dtype=torch.bool)
        mask[:1 if m <= 1 or size <= m else m] = True
        masks[gid] = mask
    return resource.hard(masks, resource.branch_ids)


def round_counts(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], multiple: int | Mapping[str, int],
                 allowed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Round each group's kept count to the nearest multiple of ``multiple`` (at least one
    multiple; a group of at most ``multiple`` channels is left alone), keeping the top scores.

    onnxruntime's CPU convolutions run far slower on odd channel counts (measured:
    docs/method-lagrangian.md, on --channel-multiple). ``allowed`` (e.g. units not yet removed for
    good) bounds the rounding up: a group then rounds down instead. ``multiple`` may be given per
    group (:meth:`Resource.multiples`).
    """
    out = {}
    for gid, mask in masks.items():
        size, k = len(mask), int(mask.sum())
        m = multiple if isinstance(multiple, int) else multiple.get(gid, 1)
        if m <= 1 or size <= m:
            out[gid] = mask.clone()
            continue
        limit = size if allowed is None else int(allowed[gid].sum())
        up = min(size, m * max(1, round(k / m)))
        k = up if up <= limit else max(min(limit, m * (limit // m)), 1)
        s = scores[gid].detach().to(torch.float64).cpu().clone()
        if allowed is not None:
            s[~allowed[gid].cpu()] = -math.inf
        new = torch.zeros(size, dtype=torch.bool)
        new[torch.argsort(s, descending=True, stable=True)[:k]] = True
        out[gid] = new
    return out


def select_to_budget(scores: Mapping[str, torch.Tensor], resource: Resource, target: float,
                     dropped_branches: Sequence[str] = (), multiple: int = 1,
                     allowed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep channels in descending score order until the MACs meet ``target``.

    Channels are dropped in ascending score order (one global ranking across groups, each
    group keeping at least its best channel); the MACs fall monotonically along that order,
    so a binary search finds the shortest prefix to drop with ``R <= target``. With
    ``multiple`` > 1 each group's count is then rounded (:func:`round_counts`); the MACs are
    no longer exactly monotone in the prefix, so the search is followed by a walk to the first
    prefix that fits. Channels outside ``allowed`` (removed for good) are never kept.
    """
    allowed = {gid: torch.ones(len(s), dtype=torch.bool) if allowed is None else allowed[gid].cpu().bool()
               for gid, s in scores.items()}
    order = []  # (score, group, index) of droppable channels
    for gid, s in scores.items():
        s = torch.where(allowed[gid], s.detach().cpu().to(torch.float64), -math.inf)
        best = int(torch.argmax(s))
        order += [(float(v), gid, i) for i, v in enumerate(s.tolist()) if i != best and allowed[gid][i]]
    order.sort(key=lambda x: x[0])

    def masks_after(k: int) -> dict[str, torch.Tensor]:
        masks = {gid: a.clone() for gid, a in allowed.items()}
        for _, gid, i in order[:k]:
            masks[gid][i] = False
        if multiple > 1 and hasattr(resource, "round_widths"):  # a latency table: its fastest widths
            return resource.round_widths(scores, masks, multiple, allowed, dropped_branches)
        return round_counts(scores, masks, resource.multiples(multiple), allowed) if multiple > 1 else masks

    def fits(k: int) -> bool:
        return resource.hard(masks_after(k), dropped_branches) <= target

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    while lo < len(order) and not fits(lo):
        lo += 1
    masks = masks_after(lo)
    if hasattr(resource, "round_widths"):  # widths chosen by the table, not blocks of a multiple
        return masks
    return _fill(scores, masks, resource, target, dropped_branches, multiple, allowed) if multiple > 1 else masks


def _fill(scores, masks, resource, target, dropped_branches, multiple, allowed) -> dict[str, torch.Tensor]:
    """Rounding leaves room under the target: add blocks of ``multiple`` top channels to the
    group where the block fits best, until no block fits (counts stay multiples, or full)."""
    while True:
        best, best_cost = None, -1.0
        for gid, m in masks.items():
            free = allowed[gid] & ~m
            full = int(m.sum()) + int(free.sum()) == len(m)  # a partial block only to complete the group
            if len(m) <= multiple or not bool(free.any()) or (int(free.sum()) < multiple and not full):
                continue
            s = torch.where(free, scores[gid].detach().cpu().to(torch.float64), -math.inf)
            grown = m.clone()
            grown[torch.argsort(s, descending=True)[:min(multiple, int(free.sum()))]] = True
            cost = resource.hard({**masks, gid: grown}, dropped_branches)
            if best_cost < cost <= target:
                best, best_cost = (gid, grown), cost
        if best is None:
            return masks
        masks = {**masks, best[0]: best[1]}


def _ladder(size: int, m: int, limit: int) -> list[int]:
    """The kept counts a group may take: multiples of ``m`` up to ``limit`` units (at least one
    multiple), and the whole group when nothing of it is removed (as :func:`round_counts`)."""
    counts = list(range(m, limit + 1, m)) or [max(1, min(limit, m))]
    return counts + ([size] if limit == size and size % m else [])


def refine_to_band(scores: Mapping[str, torch.Tensor], resource: Resource, target: float,
                   masks: Mapping[str, torch.Tensor], dropped_branches: Sequence[str] = (), multiple: int = 8,
                   allowed: Mapping[str, torch.Tensor] | None = None,
                   band: float = 0.01, max_moves: int = 64, singles: int = 400,
                   exhaustive: int = 100_000) -> dict[str, torch.Tensor]:
    """Move a rounded selection into ``[(1 - band) * target, target]`` by changing kept counts.

    :func:`select_to_budget` rounds to multiples and fills up block by block; on small layers
    one block is a large share of the model (8 of 16 channels) and the fill can stop far under
    the target (the digits vgg at 0.25 ended at 0.21). Here each group's count moves on its
    ladder of multiples (:func:`_ladder`; a group keeps its top-``scores`` units at every count).
    The choice: among the selections in the band, the one that keeps the largest score sum; if
    none is reached, the closest under the target. With at most ``exhaustive`` combinations of
    counts every one is evaluated (the digits samples: vgg 512, mlp 494). Otherwise moves from
    the given selection: a move sets one group's count, or two groups' counts at once (a swap
    when one grows and the other shrinks), each within ``J`` ladder steps of now (``J`` from
    ``singles``: about that many one-group moves are tried), or, when none of those gets closer,
    one ladder step in each of three groups; per move, the candidate by the same choice, taken
    if it is closer to the band than now; it stops in the band or when no move gets closer. Nothing changes when the selection is already in the band. Groups of at
    most ``multiple`` channels do not move. Bernoulli's rounding only (the Lagrangian's and the
    baselines' selections are unchanged).

    Cost of a candidate: R is multilinear, and with a fixed unit order per group a side's kept
    fraction is ``f_t = const_t + sum_g w_gt(k_g)``, so per group and ladder count the vector
    ``w_g(k)`` over terms is computed once and every candidate is a few vector additions.
    """
    multiples = resource.multiples(multiple)
    allowed = {g: torch.ones(len(m), dtype=torch.bool) if allowed is None else allowed[g].cpu().bool()
               for g, m in masks.items()}
    order, ladders, counts, worth = {}, {}, {}, {}
    for g, m in masks.items():
        size, step = len(m), multiples.get(g, 1)
        s = torch.where(allowed[g], scores[g].detach().cpu().to(torch.float64), -math.inf)
        order[g] = torch.argsort(s, descending=True, stable=True)
        counts[g] = int(m.sum())
        if step <= 1 or size <= step:
            continue  # left alone, as round_counts leaves it
        ladder = _ladder(size, step, int(allowed[g].sum()))
        ladders[g] = sorted({*ladder, counts[g]})
        cum = torch.cumsum(torch.where(torch.isfinite(s), s, 0.0)[order[g]], 0)
        worth[g] = torch.tensor([float(cum[k - 1]) for k in ladders[g]], dtype=torch.float64)

    def build(c: Mapping[str, int]) -> dict[str, torch.Tensor]:
        out = {}
        for g, m in masks.items():
            if g not in ladders:
                out[g] = m.cpu().clone()
                continue
            new = torch.zeros(len(m), dtype=torch.bool)
            new[order[g][:c[g]]] = True
            out[g] = new
        return out

    low, tol = (1 - band) * target, 1e-9 * target
    now = resource.hard(masks, dropped_branches)
    if low <= now <= target or now > target or not ladders:
        return {g: m.cpu().clone() for g, m in masks.items()}
    # per-term factors: f_in/f_out = fixed part + per-moving-group parts; branch keep per term
    fixed = build({**counts, **{g: 0 for g in ladders}})
    gfixed = resource._gvec(fixed)
    scale = resource.macs * resource._keep({b: torch.tensor(0.0) for b in dropped_branches})[resource.brs].prod(dim=1)
    base_in, base_out = resource.ins(gfixed), resource.outs(gfixed)
    offsets, at = {}, 0
    for g in resource.group_ids:
        offsets[g], at = at, at + resource.sizes[g]
    part_in, part_out = {}, {}
    for g, ladder in ladders.items():
        rows_in, rows_out = [], []
        for k in ladder:
            gvec = torch.zeros_like(gfixed)
            gvec[offsets[g] + order[g][:k]] = 1.0
            rows_in.append(resource.ins(gvec) - resource.ins.const)
            rows_out.append(resource.outs(gvec) - resource.outs.const)
        part_in[g], part_out[g] = torch.stack(rows_in), torch.stack(rows_out)
    index = {g: ladders[g].index(counts[g]) for g in ladders}
    if math.prod(len(v) for v in ladders.values()) <= exhaustive:  # every combination of counts
        moving = list(ladders)
        grids = torch.cartesian_prod(*[torch.arange(len(ladders[g])) for g in moving]).reshape(-1, len(moving))
        f_in = base_in + sum(part_in[g][grids[:, i]] for i, g in enumerate(moving))
        f_out = base_out + sum(part_out[g][grids[:, i]] for i, g in enumerate(moving))
        r = (f_in * f_out * scale).sum(1)
        gain = sum(worth[g][grids[:, i]] for i, g in enumerate(moving))
        gap = torch.where(r > target, math.inf, (low - r).clamp(min=0))
        i = int(torch.argmax(torch.where(gap <= float(gap.min()) + tol, gain, -math.inf)))
        if float(gap[i]) < max(0.0, low - now) - tol:
            index = {g: int(grids[i, j]) for j, g in enumerate(moving)}
        return build({**counts, **{g: ladders[g][j] for g, j in index.items()}})
    reach = max(1, singles // (2 * len(ladders)))
    for _ in range(max_moves):
        f_in = base_in + sum(part_in[g][index[g]] for g in ladders)
        f_out = base_out + sum(part_out[g][index[g]] for g in ladders)
        near = {g: range(max(0, index[g] - reach), min(len(ladders[g]), index[g] + reach + 1)) for g in ladders}
        cand = [(g, j) for g in ladders for j in near[g] if j != index[g]]
        d_in = torch.stack([part_in[g][j] - part_in[g][index[g]] for g, j in cand])
        d_out = torch.stack([part_out[g][j] - part_out[g][index[g]] for g, j in cand])
        d_worth = torch.tensor([float(worth[g][j] - worth[g][index[g]]) for g, j in cand], dtype=torch.float64)
        group = [g for g, _ in cand]
        best = None  # (key, moves, R)

        def consider(r: torch.Tensor, gain: torch.Tensor, moves) -> None:
            nonlocal best
            gap = torch.where(r > target, math.inf, (low - r).clamp(min=0))
            least = float(gap.min())
            if not math.isfinite(least):
                return
            ties = gap <= least + tol  # the gap first, the worth among equal gaps
            i = int(torch.argmax(torch.where(ties, gain, -math.inf)))
            key = (float(gap[i]), -float(gain[i]))
            if best is None or key[0] < best[0][0] - tol or (key[0] <= best[0][0] + tol and key[1] < best[0][1]):
                best = (key, moves(i), float(r[i]), float(gap[i]))

        consider(((f_in + d_in) * (f_out + d_out) * scale).sum(1), d_worth, lambda i: [cand[i]])
        for a in range(len(cand)):
            others = [b for b in range(a + 1, len(cand)) if group[b] != group[a]]
            if not others:
                continue
            r = ((f_in + d_in[a] + d_in[others]) * (f_out + d_out[a] + d_out[others]) * scale).sum(1)
            consider(r, d_worth[a] + d_worth[others], lambda i, a=a, others=others: [cand[a], cand[others[i]]])
        if best is None or best[3] >= max(0.0, low - now) - tol:  # stuck: one ladder step in three groups
            step = [i for i, (g, j) in enumerate(cand) if abs(j - index[g]) == 1]
            for x, a in enumerate(step):
                for y, b in enumerate(step[x + 1:], x + 1):
                    others = [c for c in step[y + 1:] if len({group[a], group[b], group[c]}) == 3]
                    if group[a] == group[b] or not others:
                        continue
                    r = ((f_in + d_in[a] + d_in[b] + d_in[others]) * (f_out + d_out[a] + d_out[b] + d_out[others])
                         * scale).sum(1)
                    consider(r, d_worth[a] + d_worth[b] + d_worth[others],
                             lambda i, a=a, b=b, others=others: [cand[a], cand[b], cand[others[i]]])
        if best is None or best[3] >= max(0.0, low - now) - tol:
            break
        for g, j in best[1]:
            index[g] = j
        now = best[2]
        if best[3] == 0:
            break
    counts = {**counts, **{g: ladders[g][j] for g, j in index.items()}}
    return build(counts)


def terms_from_analysis(analysis, model, branches: Mapping[str, object] = ()) -> list[Term]:
    """Terms from ``GroupAnalysis.mac_terms``; params from the node's initializers; branch
    membership (for the residual-branch factor) from ``ResidualBranch.nodes``."""
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    member: dict[str, list[str]] = {}
    for branch in analysis.residual_branches:
        if branch.id in branches:
            for name in branch.nodes:
                member.setdefault(name, []).append(branch.id)
    pieces = lambda ps: tuple((p.group, p.start, p.stop, p.block) for p in ps)  # noqa: E731
    terms = []
    for t in analysis.mac_terms:
        node = nodes.get(t.node)
        params = sum(sizes.get(i, 0) for i in node.input) if node is not None else 0
        terms.append(Term(float(t.macs), float(params), pieces(t.inputs), pieces(t.outputs), bool(t.depthwise),
                          tuple(member.get(t.node, ()))))
    return terms
