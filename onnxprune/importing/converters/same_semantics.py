"""Op versions of opsets 18-21 whose semantics, for the float/int types torch handles, equal an
older version that onnx2torch already converts. Each line names what changed in the spec and why
it does not matter here.
"""

from onnxprune.importing.converters._common import reuse

# Identity-19/21, Constant-19/21, Shape-19/21, Cast-19/21, ConstantOfShape-20/21,
# Unsqueeze/Flatten/Transpose-21 and Equal-19 (Squeeze-21 ships with onnx2torch): the new versions only add
# float8/int4/string types to the type constraints. Cast-19's `saturate` attribute only applies
# to float8 targets, which onnx2torch's Cast refuses anyway.
reuse("Identity", 16, 19, 21)
reuse("Constant", 13, 19, 21)
reuse("Shape", 15, 19, 21)

reuse("Cast", 13, 19, 21)
reuse("ConstantOfShape", 9, 20, 21)
reuse("Unsqueeze", 13, 21)
reuse("Flatten", 13, 21)
reuse("Transpose", 13, 21)
reuse("Equal", 13, 19)
# GreaterOrEqual-16 and LessOrEqual-16 only add bfloat16 (transformers' attention-mask code emits them)
reuse("GreaterOrEqual", 12, 16)
reuse("LessOrEqual", 12, 16)
