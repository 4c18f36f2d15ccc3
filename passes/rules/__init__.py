"""Per-op channel rules, one module per op family; importing this package registers them all."""

from onnxprune.passes.rules import concat_split, conv, elementwise, linear, norm, shape_ops, spatial  # noqa: F401
from onnxprune.passes.rules import recurrent  # noqa: F401
