"""Refuse before training a model whose pruned shapes the passes cannot build (issue 14 item 4).

A structured method trains for the whole run and only then hands its plan to the passes; a plan
the passes cannot apply (a PlanError) would waste the run. So before training, for the groups
the method will select in, two plans are dry-run with :func:`onnxprune.passes.apply_plan` on the
normalized model:

- **every group at its smallest reachable width**: one channel per conv group (a grouped Conv's
  channels are rounded per conv group by the methods, ``methods/_support/chunks.py``), the
  extreme the budget selection and rounding can produce;
- **every group at half its width**, rounded the same way (a typical selection, exercising the
  per-chunk rounding and the folded constants of partly removed channels).

A PlanError (or a rewrite the checker refuses) names the group; the method is refused with one
line, before any training. The dry runs cost two applications of the passes.
"""

from __future__ import annotations

import logging

from onnxprune.errors import OnnxPruneError, VerificationError
from onnxprune.passes.plan import PlanError

log = logging.getLogger(__name__)


def is_structured(method) -> bool:
    """Whether ``method`` removes channels (lagrangian, bernoulli; lc/ltp with --granularity channel)."""
    options = getattr(method, "options", None)
    chosen = getattr(options, "granularity", None) if options is not None else None
    return (chosen or method.granularities[0]) != "weight"


def extreme_plans(analysis):
    """(label, PruningPlan) for the dry runs (module docstring)."""
    from onnxprune.methods._support.chunks import equal_per_chunk, minimal_kept
    from onnxprune.passes.plan import PruningPlan

    groups = [g for g in analysis.groups if g.prunable and g.size > 1]
    smallest = {g.id: minimal_kept(g.size, g.chunks) for g in groups}
    half = {g.id: equal_per_chunk(range(0, g.size, 2), g.size, g.chunks) for g in groups}
    return [("every group at its smallest width", PruningPlan(kept=smallest)),
            ("every group at half its width", PruningPlan(kept=half))]


def check_plan_shapes(method_name: str, model, analysis, shapes) -> None:
    """Dry-run :func:`extreme_plans` through the passes; OnnxPruneError (one line) on failure."""
    from onnxprune.passes import apply_plan

    if analysis is None or not any(g.prunable and g.size > 1 for g in analysis.groups):
        return
    for label, plan in extreme_plans(analysis):
        try:
            apply_plan(model, plan, shapes, analysis=analysis)
        except (PlanError, VerificationError) as exc:
            reason = str(exc).splitlines()[0]
            raise OnnxPruneError(f"--method {method_name}: the graph passes cannot build this model's pruned "
                                 f"shapes ({label}: {reason}); refused before training") from None
        log.debug("plan check: %s applies", label)
