"""A flat configuration as TOML text: what ``--config`` reads (:mod:`onnxprune.cli.config_file`), so
that the report folder's "repeat this run" section can be loaded again as it is."""

from __future__ import annotations

import math
from typing import Any

from onnxprune.errors import ConfigError


def to_toml(config: dict[str, Any]) -> str:
    """A TOML document for a flat configuration; ``None`` values (unset options) are left out,
    so loading the result with :func:`load_config` gives back the same values."""
    lines = []
    for key, value in config.items():
        if value is None:
            continue
        lines.append(f"{key.replace('_', '-')} = {_toml_value(value, key)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        if any(v is None for v in value):
            raise ConfigError(f"key {key!r}: a list with an unset value cannot be written as TOML")
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise ConfigError(f"key {key!r}: {type(value).__name__} cannot be written as TOML")
