"""Typed method options: built and checked once, the unknown key named, the CLI built from the same fields."""

from __future__ import annotations

import dataclasses

import click
import pytest

from onnxprune.cli.method_options import field_option, merged_options
from onnxprune.errors import OnnxPruneError
from onnxprune.methods.base import registry
from onnxprune.methods.lagrangian import Lagrangian, LagrangianOptions
from onnxprune.methods.magnitude import MagnitudeOptions


@pytest.mark.parametrize("cls, values, message", [
    (MagnitudeOptions, {"sparsity": 1.0}, r"--sparsity 1: must be in \[0, 1\)"),
    (MagnitudeOptions, {"sparsity": "half"}, r"--sparsity 'half': expected a number"),
    (LagrangianOptions, {"damping": -1}, r"--damping -1: must be >= 0"),
    (LagrangianOptions, {"dual_lr": 0}, r"--dual-lr 0: must be > 0"),
    (LagrangianOptions, {"taper_epochs": 1.5}, r"--taper-epochs 1.5: expected a whole number"),
    (LagrangianOptions, {"recalibrate": "yes"}, r"--recalibrate 'yes': expected true or false"),
    (LagrangianOptions, {"target_macs": "half"}, r"--target-macs 'half': expected a fraction"),
    (LagrangianOptions, {"damping": float("inf")}, r"--damping inf: must be finite"),
    (LagrangianOptions, {"dampign": 1.0}, r"--method lagrangian: unknown option\(s\) dampign \(its options: .*damping"),
])
def test_a_bad_value_or_key_is_one_error_naming_the_option(cls, values, message):
    with pytest.raises(OnnxPruneError, match=message):
        cls.build(values)


def test_values_are_coerced_and_defaults_come_from_the_fields():
    built = LagrangianOptions.build({"target_macs": 0.5, "taper_epochs": 4.0})
    assert built.target_macs == "0.5" and built.taper_epochs == 4 and built.damping == 200.0
    assert Lagrangian(damping=100).options.damping == 100.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.damping = 1.0  # frozen: built once, never changed behind the method's back


def test_the_cli_options_are_the_fields():
    hints = {"damping": float, "taper_epochs": int | None}
    fields = {f.name: f for f in dataclasses.fields(LagrangianOptions)}
    damping = field_option(fields["damping"], hints["damping"])
    assert damping.opts == ["--damping"] and damping.default == 200.0
    assert isinstance(damping.type, click.FloatRange) and damping.type.min == 0
    options, readers = merged_options(registry())
    by_name = {o.name: o for o in options}
    assert readers["target_macs"] == {"lagrangian", "bernoulli"}  # one declaration, two readers
    assert by_name["recalibrate"].secondary_opts == ["--no-recalibrate"]
    for name, cls in registry().items():  # every method's every field is an option of the command
        assert cls.option_names() <= set(by_name), name
