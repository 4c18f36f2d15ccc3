"""If, Loop and Scan: refused by name, with the reason (issue 14 item 5).

An ``If`` whose condition folds to a constant never gets here: normalization
(:mod:`onnxprune.importing.normalize`, step 5) replaces it by the branch it takes. Every other
control-flow node is refused with one line naming it. Keeping it as an onnxruntime "island"
inside the torch module was considered and not chosen: the island would be a constant to
autograd (no gradient reaches the weights before it, nor its own), its subgraph's weights
would not be trained or written back, and its outputs' shapes can depend on the data, which the
channel analysis cannot follow; a model would train but silently not as the user expects.
"""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter

from onnxprune.importing.converters._common import refuse

_REASONS = {
    "If": "control flow with a condition computed from the inputs is not converted (an If whose condition "
          "folds to a constant is folded before import)",
    "Loop": "control flow (a loop over a subgraph) is not converted",
    "Scan": "control flow (a scan over a subgraph) is not converted",
}
_VERSIONS = {"If": (1, 11, 13, 16, 19, 21), "Loop": (1, 11, 13, 16, 19, 21), "Scan": (8, 9, 11, 16, 19, 21)}


def _refuse(node, version: int):
    raise refuse(node, version, _REASONS[node.operation_type])


for _op, _versions in _VERSIONS.items():
    for _version in _versions:
        add_converter(operation_type=_op, version=_version)(lambda node, graph, _v=_version: _refuse(node, _v))
