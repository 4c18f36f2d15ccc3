"""Kept channels of a grouped Conv's output, equal per conv group (issue 14 item 4).

A channel group feeding (or produced by) a Conv with ``chunks`` groups is laid out in
``chunks`` runs of ``size / chunks`` channels, run j belonging to conv group j; the passes can
only remove equally many channels from every run (``GroupAnalysis.validate``). The methods
select channels by score or threshold, which ignores the runs, so a plan is rounded **up** per
run here: every run keeps as many channels as the fullest one, the extra ones being the run's
best-scored channels not yet kept (without scores: the lowest indices).

Rounding up is exact: an added channel was gated off during training, so its gate tensors were
zeroed when the gates were baked, and the trained model computes that channel as the pruned
model does when it keeps it (a zero, or the constant a removed channel leaves). It only costs
the few MACs of the added channels. With ``chunks == 1`` nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def equal_per_chunk(kept: Sequence[int], size: int, chunks: int, scores: Sequence[float] | None = None) -> tuple[int, ...]:
    """``kept`` with every run of ``size / chunks`` channels keeping as many as the fullest run."""
    kept = sorted(int(i) for i in kept)
    if chunks <= 1 or size % chunks:
        return tuple(kept)
    run = size // chunks
    per_run = [[i for i in kept if i // run == j] for j in range(chunks)]
    want = max(len(r) for r in per_run)
    result = []
    for j, chosen in enumerate(per_run):
        missing = want - len(chosen)
        if missing:
            candidates = [i for i in range(j * run, (j + 1) * run) if i not in set(chosen)]
            if scores is not None:  # the best-scored first; ties by index
                candidates.sort(key=lambda i: (-float(scores[i]), i))
            chosen = sorted(chosen + candidates[:missing])
        result.extend(chosen)
    return tuple(result)


def round_plan(plan, chunks: Mapping[str, int], sizes: Mapping[str, int]):
    """A PruningPlan with every group's kept channels rounded up per conv group (``chunks[id]``)."""
    from onnxprune.passes.plan import PruningPlan

    kept = {group: equal_per_chunk(indices, sizes[group], chunks.get(group, 1)) for group, indices in plan.kept.items()}
    rounded = sorted(g for g, k in kept.items() if k != tuple(sorted(plan.kept[g])))
    if not rounded:
        return plan
    return PruningPlan(kept=kept, dropped_branches=plan.dropped_branches,
                       meta={**plan.meta, "rounded_up_per_conv_group": rounded})


def round_plan_for(plan, analysis):
    """:func:`round_plan` with the chunks and sizes of ``analysis``'s groups."""
    groups = {g.id: g for g in analysis.groups}
    return round_plan(plan, {g: groups[g].chunks for g in plan.kept if g in groups},
                      {g: groups[g].size if g in groups else len(k) for g, k in plan.kept.items()})


def minimal_kept(size: int, chunks: int) -> tuple[int, ...]:
    """The smallest selection the methods can produce for a group: one channel per conv group."""
    chunks = chunks if chunks > 1 and size % chunks == 0 else 1
    run = size // chunks
    return tuple(int(j * run) for j in range(chunks))

