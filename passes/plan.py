"""The pruning plan: the one contract between pruning methods and the graph-rewrite passes.

A plan names what to keep, by ONNX names only, so it can be written by any tool and applied
later to the same model:

    kept[group_id]        sorted channel indices (0 <= i < group size) kept in that channel group;
                          groups not listed keep every channel
    dropped_branches      residual branches (``Add(x, f(x))`` -> ``x``) to remove, by branch id
    meta                  free-form JSON data (method, budget, ...), carried along unchanged

Group and branch ids come from :func:`onnxprune.passes.groups.analyze`. JSON form::

    {"format": "onnxprune.plan/1",
     "kept": {"layer1.0.conv1.weight": [0, 2, 5]},
     "dropped_branches": ["/layer2/layer2.1/Add"],
     "meta": {"method": "bernoulli"}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from onnxprune.errors import OnnxPruneError

FORMAT = "onnxprune.plan/1"


class PlanError(OnnxPruneError):
    """A plan is malformed or does not fit the model it is applied to."""


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """Kept channel indices per group, residual branches to drop, and free-form metadata."""

    kept: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    dropped_branches: tuple[str, ...] = ()
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        kept = {}
        for group, indices in dict(self.kept).items():
            if not isinstance(group, str):
                raise PlanError(f"plan: group id {group!r} is not a string")
            values = tuple(int(i) for i in indices)
            if len(set(values)) != len(values):
                raise PlanError(f"plan: group {group!r} lists a kept index twice")
            kept[group] = tuple(sorted(values))
        # frozen dataclass: set the normalized, read-only views once here
        object.__setattr__(self, "kept", MappingProxyType(kept))
        object.__setattr__(self, "dropped_branches", tuple(dict.fromkeys(self.dropped_branches)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.kept.items())), self.dropped_branches))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PruningPlan):
            return NotImplemented
        return (
            dict(self.kept) == dict(other.kept)
            and self.dropped_branches == other.dropped_branches
            and dict(self.meta) == dict(other.meta)
        )

    @property
    def is_empty(self) -> bool:
        """True when the plan lists no group and no branch (apply then only cleans up)."""
        return not self.kept and not self.dropped_branches

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kept": {group: list(indices) for group, indices in self.kept.items()},
            "dropped_branches": list(self.dropped_branches),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "plan") -> "PruningPlan":
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise PlanError(f"{source}: unknown format {data['format']!r}, expected {FORMAT!r}")
        unknown = set(data) - {"format", "kept", "dropped_branches", "meta"}
        if unknown:
            raise PlanError(f"{source}: unknown key(s) {sorted(unknown)}")
        kept = data.get("kept", {})
        if not isinstance(kept, dict) or not all(
            isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
            for v in kept.values()
        ):
            raise PlanError(f"{source}: 'kept' must map group ids to lists of integers")
        branches = data.get("dropped_branches", [])
        if not isinstance(branches, list) or not all(isinstance(b, str) for b in branches):
            raise PlanError(f"{source}: 'dropped_branches' must be a list of branch ids")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise PlanError(f"{source}: 'meta' must be an object")
        return cls(kept=kept, dropped_branches=tuple(branches), meta=meta)

    def dumps(self) -> str:
        """JSON text with one line per group (index lists stay on their line)."""
        data = self.to_json()
        kept = ",\n".join(f"    {json.dumps(g)}: {json.dumps(v)}" for g, v in data["kept"].items())
        return (f'{{\n  "format": {json.dumps(FORMAT)},\n  "kept": {{\n{kept}\n  }},\n'
                f'  "dropped_branches": {json.dumps(data["dropped_branches"])},\n'
                f'  "meta": {json.dumps(data["meta"])}\n}}\n')

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.dumps())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PruningPlan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"{path}: no such plan file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, source=str(path))
