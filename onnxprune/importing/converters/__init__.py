"""onnx2torch converters for the op versions of opsets 18-21 that today's exporters emit.

Importing this package registers every converter in onnx2torch's own registry
(``onnx2torch.node_converters.registry.add_converter``), keyed by (domain, op type, since-version);
registering a key twice raises there. One module per op family.
"""

from onnxprune.importing.converters import (  # noqa: F401
    clip,
    control_flow,
    gelu,
    group_norm,
    pad,
    pooling,
    recurrent,
    reduce,
    reshape,
    resize,
    same_semantics,
    split,
)
