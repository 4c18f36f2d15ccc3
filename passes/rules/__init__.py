"""Per-op channel rules, one module per op family; importing this package registers them all."""

from onnxprune.passes.rules import (  # noqa: F401
    attention,
    concat_split,
    conv,
    elementwise,
    linear,
    norm,
    recurrent,
    shape_ops,
    spatial,
)
