"""Pruning methods, one per file, registered by name (the CLI's --method choices)."""

import importlib

from onnxprune.methods.base import PruningMethod, TrainContext, register, registry

_BUILTIN = ("magnitude", "lc", "ltp", "lagrangian", "bernoulli")


def _load_builtin_methods() -> None:
    for name in _BUILTIN:
        try:
            importlib.import_module(f"onnxprune.methods.{name}")
        except ModuleNotFoundError as exc:  # a method not written yet is simply absent
            if exc.name != f"onnxprune.methods.{name}":
                raise


__all__ = ["PruningMethod", "TrainContext", "register", "registry"]
