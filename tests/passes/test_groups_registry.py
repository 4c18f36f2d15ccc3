"""The op-rule registry: keyed by (domain, op, since-version), no silent double registration."""

from __future__ import annotations

import pytest

from onnxprune.passes.rules.core import RuleRegistryError, lookup, register, registered


def test_registering_a_key_twice_is_an_error() -> None:
    with pytest.raises(RuleRegistryError, match="Conv since 1 already registered"):
        register("Conv", 1)(lambda node, ctx: None)


def test_lookup_picks_the_newest_rule_not_after_the_opset() -> None:
    register("TestOnlyOp", 5, domain="test.only")(first := lambda node, ctx: None)
    register("TestOnlyOp", 9, domain="test.only")(second := lambda node, ctx: None)
    assert lookup("TestOnlyOp", 4, "test.only") is None
    assert lookup("TestOnlyOp", 8, "test.only") is first
    assert lookup("TestOnlyOp", 20, "test.only") is second


def test_required_ops_have_rules() -> None:
    ops = {op for _, op, _ in registered()}
    required = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "Add", "Sub", "Mul", "Div",
                "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Gelu", "Erf", "Tanh",
                "Concat", "Split", "Slice", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Pad",
                "Resize", "Flatten", "Reshape", "Gemm", "MatMul", "LayerNormalization"}
    assert required <= ops, required - ops
