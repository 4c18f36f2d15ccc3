"""TOML configuration files for any command: ``--config prune.toml``.

A configuration file holds option values under the option's name, dashes or underscores alike
(``input-shape`` = ``input_shape``), method parameters included since they are options of the
``prune`` command too::

    method = "lc"
    sparsity = 0.9
    calib = "digits.npz"          # an existing file next to this one is found there
    input-shape = ["image=1x1x8x8"]

Precedence, lowest to highest: the option's default < the configuration file < the command line.
It is built on click's ``default_map``: the eager ``--config`` option loads the file before the
other options are parsed, so a value from the file becomes the option's default and still goes
through the option's own type conversion and validation. :func:`effective_config` returns every
option's final value (and :func:`parameter_sources` where each came from), which the run report
records so that a run can be repeated with ``--config``; :func:`onnxprune.reporting.toml.to_toml` writes it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import tomllib
from click.core import ParameterSource

from onnxprune.errors import ConfigError

CONFIG_PARAM = "config"
_SOURCE_NAMES = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
    ParameterSource.DEFAULT_MAP: "config",
    ParameterSource.DEFAULT: "default",
    ParameterSource.PROMPT: "prompt",
}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The file's top-level table; raises ConfigError with one line on a missing or bad file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None


def _configurable(command: click.Command) -> dict[str, click.Parameter]:
    """Key -> parameter. A key is the option's long name with underscores (``--min-runs`` ->
    ``min_runs``, ``--json`` -> ``json`` even when the function argument is ``as_json``), or
    the argument's name."""
    keys = {}
    for param in command.params:
        if not param.name or param.name == CONFIG_PARAM or not param.expose_value:
            continue
        longs = [opt for opt in param.opts if opt.startswith("--")]
        key = longs[0][2:].replace("-", "_") if longs else param.name
        keys[key] = param
    return keys


def apply_config_defaults(
    ctx: click.Context, config: dict[str, Any], base_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Validates ``config`` against ``ctx.command``'s parameters and installs it as the context's
    ``default_map``, below the command line and above the options' defaults. A relative path
    for a ``click.Path`` option that exists relative to ``base_dir`` (the file's folder) is
    taken from there. Returns the normalized mapping (parameter name -> value)."""
    params = _configurable(ctx.command)
    normalized: dict[str, Any] = {}
    for key, value in config.items():
        name = key.replace("-", "_")
        if name not in params:
            valid = ", ".join(sorted(p.replace("_", "-") for p in params))
            raise ConfigError(f"unknown key {key!r} in the configuration (valid keys: {valid})")
        if isinstance(value, dict):
            raise ConfigError(f"key {key!r}: tables are not options; write {key} = <value>")
        param = params[name]
        normalized[param.name] = _normalize(param, value, base_dir)
    ctx.default_map = {**(ctx.default_map or {}), **normalized}
    return normalized


def _normalize(param: click.Parameter, value: Any, base_dir: str | os.PathLike | None) -> Any:
    multiple = getattr(param, "multiple", False) or param.nargs == -1
    if multiple and not isinstance(value, list):
        value = [value]  # `input-shape = "x=1x3"` means one occurrence, not one per character
    elif not multiple and param.nargs == 1 and isinstance(value, list):
        # options such as --batch 1,8,32 take comma lists; TOML's natural form is an array
        value = ",".join(str(v) for v in value)
    if base_dir is not None and isinstance(param.type, click.Path):
        if isinstance(value, list):
            return [_rebase(v, base_dir) for v in value]
        return _rebase(value, base_dir)
    return value


def _rebase(value: Any, base_dir: str | os.PathLike) -> Any:
    """An existing file or folder named relative to the config file is found there; any other
    value (an output path, a keyword such as ``synthetic``) stays as written."""
    if isinstance(value, str) and value and not os.path.isabs(value) and (Path(base_dir) / value).exists():
        return str(Path(base_dir) / value)
    return value


def _config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not ctx.resilient_parsing:
        apply_config_defaults(ctx, load_config(value), base_dir=Path(value).parent)
    return value


def config_option(func=None):
    """Decorator adding the eager ``--config FILE.toml`` option to a click command."""
    decorator = click.option(
        "--config",
        CONFIG_PARAM,
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=True,
        callback=_config_callback,
        help="TOML file of option values (command-line options override it).",
    )
    return decorator(func) if func is not None else decorator


def effective_config(ctx: click.Context) -> dict[str, Any]:
    """Every option's final value by key, as plain JSON/TOML types (``--config`` excluded)."""
    return {
        key: _plain(ctx.params[param.name])
        for key, param in _configurable(ctx.command).items()
        if param.name in ctx.params
    }


def parameter_sources(ctx: click.Context) -> dict[str, str]:
    """Where each option's value came from ("default", "config", "command line"), keyed by
    parameter name as in ``ctx.params`` (``as_json``), not by configuration key (``json``)."""
    sources = {}
    for param in _configurable(ctx.command).values():
        source = ctx.get_parameter_source(param.name)
        sources[param.name] = _SOURCE_NAMES.get(source, str(source)) if source is not None else "default"
    return sources


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
