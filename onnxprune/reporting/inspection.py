"""What ``onnxprune inspect`` shows, as plain data: what a model costs and what could be pruned.

One row per MAC-bearing layer (node, op, weight shape, MACs, params, the channel group its output
channels belong to, whether they can be pruned and, if not, why), the channel groups with their
sizes, the residual branches, the totals, the import check (torch vs onnxruntime) and, for a
plan, what it removes and the MACs after it.
"""

from __future__ import annotations

from onnxprune.graph.macs import count_macs
from onnxprune.importing.importer import import_model
from onnxprune.importing.normalize import normalize
from onnxprune.passes.groups import analyze
from onnxprune.passes.plan import PruningPlan


def inspection_report(model, input_shapes, *, plan=None, import_check=True) -> dict:
    """Everything `inspect` shows, as plain data (the JSON output). ``plan``: a PruningPlan or
    the path of its JSON file."""
    analysis_model = normalize(model)  # groups are named and found as in prune/apply (Constant weights)
    check = None
    if import_check:
        imported = import_model(model, input_shapes)
        analysis_model = imported.onnx_model
        check = {"max_abs_error": imported.check.max_abs, "max_rel_error": imported.check.max_rel}
    cost = count_macs(analysis_model, input_shapes)
    if plan is not None and not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    # a plan that prunes a transformer's hidden size was made on the analysis that has it
    analysis = analyze(analysis_model, input_shapes, hidden_size=bool(plan is not None and plan.meta.get("hidden_size")))
    layer_groups = _groups_by_weight(analysis)
    layers = []
    for layer in cost.layers:
        group = layer_groups.get(layer.weight) if layer.weight else None
        layers.append(
            {
                "node": layer.node,
                "op": layer.op_type,
                "weight_shape": list(layer.weight_shape) if layer.weight_shape else None,
                "macs": layer.macs,
                "params": layer.params,
                "group": group.id if group else None,
                "prunable": bool(group and group.prunable),
                "why_not": None if group is None else group.reason,
            }
        )
    report = {
        "inputs": {name: list(shape) for name, shape in input_shapes.items()},
        "layers": layers,
        "total_macs": cost.total_macs,
        "total_params": cost.total_params,
        "import_check": check,
        "groups": [
            {"id": g.id, "size": g.size, "chunks": g.chunks, "prunable": g.prunable, "reason": g.reason}
            for g in analysis.groups
        ],
        "residual_branches": [
            {"id": b.id, "macs": b.macs} for b in analysis.residual_branches
        ],
    }
    if plan is not None:
        report["plan"] = _plan_summary(analysis, plan, cost.total_macs)
    return report


def _groups_by_weight(analysis) -> dict:
    """Weight initializer -> the channel group its output channels belong to."""
    by_weight = {}
    for group in analysis.groups:
        for member in group.producers:
            by_weight.setdefault(member.name, group)
    return by_weight


def _plan_summary(analysis, plan, total_macs) -> dict:
    analysis.validate(plan)
    sizes = {g.id: g.size for g in analysis.groups}
    removed = {gid: sizes[gid] - len(kept) for gid, kept in plan.kept.items()}
    macs_after = analysis.predicted_macs(plan)
    return {
        "channels_removed": removed,
        "branches_dropped": list(plan.dropped_branches),
        "macs_before": total_macs,
        "macs_after": macs_after,
    }
