"""Typed method options: each method declares its options once, as a frozen dataclass.

    @dataclasses.dataclass(frozen=True)
    class LCOptions(MethodOptions):
        sparsity: float | None = sparsity_option()          # shared declarations: one factory each
        mu0: float = option(1e-2, "LC: first penalty weight μ0.", min=0, min_open=True)

    LCOptions.build({"sparsity": 0.9})       # from the command line, a config file or the API

:meth:`MethodOptions.build` is the one place values are checked: an unknown key raises an
:class:`OnnxPruneError` that names it (and the known ones), every value is coerced to the field's
type and checked against its range or choices, with the option's flag in the message. A default
is written once, in the field; the command line (:mod:`onnxprune.cli.method_options`) builds its
click options from the same fields, so ranges, choices and help text are not repeated there.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from onnxprune.errors import OnnxPruneError


@dataclasses.dataclass(frozen=True)
class Spec:
    """How an option reads on the command line and which values it accepts."""

    help: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()  # extra spellings (aliases) besides --name-with-dashes
    negatable: bool = True  # booleans: --x/--no-x (else a plain --x flag)
    kind: str | None = None  # "dir"/"file": a path; "target": a MAC budget (fraction or count with a unit)
    check: Callable[[str, Any], None] | None = None  # extra check(flag, value) raising OnnxPruneError
    show_default: bool = True


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field for one option (``default`` and a :class:`Spec`)."""
    return dataclasses.field(default=default, metadata={"spec": Spec(help, **spec)})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Base of every method's frozen options dataclass."""

    method: ClassVar[str] = ""

    @classmethod
    def build(cls, values: Mapping[str, Any] | None = None) -> MethodOptions:
        """The options from ``values`` (missing ones keep their defaults); raises on an unknown
        key or a value of the wrong type or out of range."""
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields)) or "none"
            raise OnnxPruneError(f"--method {cls.method}: unknown option(s) {', '.join(unknown)} (its options: {known})")
        hints = typing.get_type_hints(cls)
        checked = {name: _coerce(name, value, hints[name], spec(fields[name])) for name, value in values.items()}
        return cls(**checked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spec(field: dataclasses.Field) -> Spec:
    return field.metadata.get("spec") or Spec("")


def base_type(hint: Any) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of an annotation such as ``float | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    return (args[0] if args else hint), optional


def _coerce(name: str, value: Any, hint: Any, s: Spec) -> Any:
    kind, optional = base_type(hint)
    where = flag(name)
    if value is None:
        if optional:
            return None
        raise OnnxPruneError(f"{where}: a value is required")
    if kind is bool:
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise OnnxPruneError(f"{where} {value!r}: expected true or false")
        return bool(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise OnnxPruneError(f"{where} {value!r}: expected a number")
        try:
            value = float(value)
        except ValueError:
            raise OnnxPruneError(f"{where} {value!r}: expected a number") from None
        if not math.isfinite(value):
            raise OnnxPruneError(f"{where} {value}: must be finite")
    elif kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise OnnxPruneError(f"{where} {value!r}: expected a whole number")
        value = int(value)
    elif kind is str:
        value = str(value)
    if s.choices is not None and value not in s.choices:
        raise OnnxPruneError(f"{where} {value!r}: choose from {', '.join(s.choices)}")
    if kind in (int, float):
        _check_range(where, value, s)
    if s.check is not None:
        s.check(where, value)
    return value


def _check_range(where: str, value: float, s: Spec) -> None:
    low_ok = s.min is None or (value > s.min if s.min_open else value >= s.min)
    high_ok = s.max is None or (value < s.max if s.max_open else value <= s.max)
    if low_ok and high_ok:
        return
    if s.min is not None and s.max is not None:
        span = ("(" if s.min_open else "[") + f"{s.min:g}, {s.max:g}" + (")" if s.max_open else "]")
        raise OnnxPruneError(f"{where} {value:g}: must be in {span}")
    bound = f">{'' if s.min_open else '='} {s.min:g}" if s.min is not None else f"<{'' if s.max_open else '='} {s.max:g}"
    raise OnnxPruneError(f"{where} {value:g}: must be {bound}")


# --- declarations several methods share: one factory each, so they cannot drift apart ---------

def sparsity_option() -> Any:
    return option(None, "Target fraction of weights (or channels) removed.", min=0, max=1, max_open=True)


def granularity_option() -> Any:
    return option("weight", "weight: zeros (smaller file with --sparse-storage); channel: channels removed (faster).",
                  choices=("weight", "channel"))


def channel_multiple_option() -> Any:
    return option(8, "structured methods: round each layer's kept channels to a multiple of this (onnxruntime's "
                     "CPU convolutions slow down on odd channel counts; 1 = no rounding).", min=1)


def trail_option() -> Any:
    return option(None, "Write pruned models at the MAC (or sparsity) levels training passes, with a table, "
                        "into this folder.", kind="dir", show_default=False)


def target_macs_option() -> Any:
    return option(None, "MAC budget: a fraction of the original in (0, 1] (0.5), or a count with a unit "
                        "(350M, 1.2G)", kind="target", check=_check_target, show_default=False)


def gate_lr_option() -> Any:
    return option(None, "structured methods: learning rate of the gate parameters' own Adam optimizer "
                        "[lagrangian: 0.05, or 4 / taper steps if larger; bernoulli 0.05].", min=0, min_open=True)


def recalibrate_option() -> Any:
    return option(True, "lagrangian, bernoulli: after the hard selection, map every kept conv channel onto the "
                        "original's activation mean and spread (BN re-estimation that works with BN folded into "
                        "the convs).")


def batchnorm_option() -> Any:
    return option(False, "lagrangian: once the selection is fixed, fine-tune with a BatchNorm after every conv "
                         "that has none (identity at the start, trained with batch statistics, folded back into "
                         "the conv at write-back). Off by default: on the real models it measured 0.3 to 4.3 "
                         "points worse than the recalibration alone (docs/real-models.md).")


def latency_table_option() -> Any:
    return option(None, "structured methods: a table from `onnxprune profile`; the budget is then the table's "
                        "predicted latency (--target-macs F = F of the predicted full-width latency) and "
                        "--channel-multiple M becomes a band: each layer keeps the largest count within M that "
                        "the table says is no slower (docs/latency-table.md).", kind="file", show_default=False)


def _check_target(where: str, value: str) -> None:
    from onnxprune.methods._support.resource import read_target  # the one parser of the syntax

    read_target(value)
