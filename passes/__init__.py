"""Graph-rewrite passes: turn a pruning plan into a physically smaller, equivalent ONNX model.

    analyze(model, input_shapes) -> GroupAnalysis     what is coupled (channel groups, branches)
    PruningPlan                                       what to keep (JSON, keyed by ONNX names)
    apply_plan(model, plan, input_shapes) -> model    the rewrite, checker-verified
    masked_reference(model, plan, analysis)           the model it must equal
"""

from onnxprune.passes.apply import apply_plan, eliminate_dead_structure
from onnxprune.passes.groups import GroupAnalysis, analyze
from onnxprune.passes.masking import masked_reference
from onnxprune.passes.plan import PlanError, PruningPlan
from onnxprune.passes.structures import ChannelGroup, MacTerm, ResidualBranch, TensorAxis

__all__ = [
    "ChannelGroup", "GroupAnalysis", "MacTerm", "PlanError", "PruningPlan", "ResidualBranch", "TensorAxis",
    "analyze", "apply_plan", "eliminate_dead_structure", "masked_reference",
]
