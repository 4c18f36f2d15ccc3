"""The methods' options as click options, built from each method's typed ``Options`` dataclass.

A field ``damping: float = option(5000.0, "...", min=0)`` becomes ``--damping`` with a
``FloatRange(0)``, its default and its help; booleans become ``--x/--no-x`` (or a plain flag),
choices a ``Choice``, ``kind="dir"`` a folder path, ``kind="file"`` an existing file,
``kind="target"`` a string the method parses (a fraction or a count with a unit). The values are checked once more, and for good, by
``Options.build`` when the method is made, so click only gives early, per-option messages.

Options of the same name in several methods (``--sparsity``, ``--target-macs``) come from one
factory in :mod:`onnxprune.methods.options`; :func:`merged_options` refuses two that differ.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import click

from onnxprune.methods.options import base_type, flag, spec


def field_option(field: dataclasses.Field, hint: Any) -> click.Option:
    """The click option for one typed field."""
    s = spec(field)
    kind, _ = base_type(hint)
    names = [flag(field.name), *s.flags]
    extra: dict[str, Any] = {}
    if kind is bool:
        if s.negatable:
            names = [f"{names[0]}/--no-{names[0][2:]}", *names[1:]]
        else:
            extra["is_flag"] = True
        click_type = None
    elif s.choices is not None:
        click_type = click.Choice(s.choices)
    elif s.kind == "dir":
        click_type = click.Path(file_okay=False)
    elif s.kind == "file":
        click_type = click.Path(exists=True, dir_okay=False)
    elif kind is float:
        click_type = click.FloatRange(s.min, s.max, min_open=s.min_open, max_open=s.max_open) \
            if (s.min, s.max) != (None, None) else float
    elif kind is int:
        click_type = click.IntRange(s.min, s.max, min_open=s.min_open, max_open=s.max_open) \
            if (s.min, s.max) != (None, None) else int
    else:
        click_type = str
    if click_type is not None:
        extra["type"] = click_type
    show = s.show_default and field.default is not None
    return click.Option([*names, field.name], default=field.default, help=s.help, show_default=show, **extra)


def options_of(method_cls) -> list[click.Option]:
    """One method's click options, from its ``Options`` dataclass."""
    hints = typing.get_type_hints(method_cls.Options)
    return [field_option(f, hints[f.name]) for f in dataclasses.fields(method_cls.Options)]


def merged_options(methods: dict[str, type]) -> tuple[list[click.Option], dict[str, set[str]]]:
    """All methods' options, deduplicated, and which methods read each (by parameter name)."""
    options: dict[str, click.Option] = {}
    readers: dict[str, set[str]] = {}
    for name, cls in sorted(methods.items()):
        for option in options_of(cls):
            seen = options.get(option.name)
            if seen is not None and _signature(seen) != _signature(option):
                raise ValueError(f"option --{option.name} is declared differently by method {name!r} "
                                 f"and another method; share one declaration")
            options.setdefault(option.name, option)
            readers.setdefault(option.name, set()).add(name)
    return list(options.values()), readers


def _signature(option: click.Option) -> tuple:
    return (tuple(option.opts), option.type.to_info_dict(), option.default, option.is_flag, option.multiple)
