"""The contract between the shared training loop and a pruning method.

The loop (``onnxprune.training.loop``) owns data, optimizer, loss, device, DDP and the progress bar.
A method only reacts to hooks; it never writes its own loop. The hooks, in order:

    setup(ctx)                       once, after import; wrap weights, add gates, read groups
    param_groups(ctx) -> [dict]      extra optimizer groups (thresholds, gates) with their own lr
    for epoch in range(total_epochs(ctx)):
        for batch:
            before_step(ctx)
            loss = task_loss + penalty(ctx)     (penalty may return None)
            loss.backward(); after_backward(ctx)
            optimizer.step(); after_step(ctx)
        end_epoch(ctx)               may set ctx.stop = True, or replace ctx.model (see below)
    finalize(ctx) -> PruningPlan     leaves ctx.model holding the final (masked) weights

What the loop (onnxprune.training.loop) guarantees to a method:

- ``setup`` runs after the model is on ``ctx.device`` and before the optimizer and the DDP wrapper
  exist: parameters a method adds to the model there are trained (and averaged across processes).
- Parameters returned by ``param_groups`` are optimized only in those groups (the weights' group
  leaves them out); their gradients are averaged across processes by the loop even when they are
  not part of the model.
- During steps the model is in train mode except BatchNorm (frozen statistics); ``ctx.evaluate``
  runs in eval mode under ``no_grad`` and restores the modes. After training: eval mode.
- ``ctx.step`` counts optimizer steps from 0 (read it in ``before_step`` as the step about to run);
  ``ctx.metrics`` is shown in the progress bar and copied into ``ctx.history`` after ``end_epoch``
  (with ``loss`` and the holdout metrics); ``ctx.stop`` ends training after the current epoch.
- Every process runs every hook with the same seed, so random choices in hooks agree across ranks.
- ``end_epoch`` may replace the model with a physically smaller one (Bernoulli's compaction): it
  sets ``ctx.model`` (and ``imported``, ``weights``, ``analysis`` to match) and ``ctx.state_map``
  (new parameter -> (old parameter, function slicing an old per-element state tensor to the
  new shape)); the loop then trains the new model with a fresh optimizer holding the carried
  state (Adam moments) and, under DDP, a fresh wrapper. ``ctx.evaluate`` follows ``ctx.model``.

Weights are addressed by ONNX initializer name everywhere (``ctx.weights``); the plan a method
returns is keyed by ONNX names too, so the passes never see torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from onnxprune.methods.options import MethodOptions


@dataclasses.dataclass
class TrainContext:
    """What the loop hands to a method. Fields are filled by the loop; methods may read all and
    write only ``stop`` and ``metrics`` (shown in the progress bar and the run report), and in
    ``end_epoch`` replace the model (see the module docstring)."""

    model: torch.nn.Module
    imported: Any  # onnxprune.importing.importer.ImportedModel: name map, normalized ONNX, params
    weights: dict[str, torch.nn.Parameter]  # prunable weights by ONNX name (Conv/Gemm/MatMul)
    analysis: Any  # onnxprune.passes.groups.GroupAnalysis or None (channel groups, residuals)
    device: torch.device
    epochs: int
    steps_per_epoch: int
    lr: float
    epoch: int = 0
    step: int = 0
    stop: bool = False
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    evaluate: Any = None  # callable() -> dict(fidelity=..., accuracy=...) on the holdout
    is_main_process: bool = True
    state_map: dict = dataclasses.field(default_factory=dict)  # set with a replaced model, see above
    calibration: Any = None  # a few hundred training inputs (CPU tensors, graph-input order), for statistics
    lr_probe: Any = None  # without --lr: the probe's chosen rate and losses (onnxprune.training.lr_probe)


class PruningMethod:
    """Base class: every hook is a no-op, so a method overrides only what it needs.

    ``Options`` is the method's frozen options dataclass (:mod:`onnxprune.methods.options`);
    ``PruningMethod(**values)`` builds and checks it once, and the hooks read ``self.options``.
    The prune command and the API take their option names, defaults and checks from it."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("weight",)
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, **options: Any) -> None:
        self.options = self.Options.build(options)

    @classmethod
    def option_names(cls) -> set[str]:
        return {field.name for field in dataclasses.fields(cls.Options)}

    def setup(self, ctx: TrainContext) -> None:
        pass

    def param_groups(self, ctx: TrainContext) -> list[dict]:
        return []

    def total_epochs(self, ctx: TrainContext) -> int:
        return ctx.epochs

    def before_step(self, ctx: TrainContext) -> None:
        pass

    def penalty(self, ctx: TrainContext) -> torch.Tensor | None:
        return None

    def after_backward(self, ctx: TrainContext) -> None:
        pass

    def after_step(self, ctx: TrainContext) -> None:
        pass

    def end_epoch(self, ctx: TrainContext) -> None:
        pass

    def finalize(self, ctx: TrainContext):  # -> onnxprune.passes.plan.PruningPlan
        raise NotImplementedError(f"method {self.name!r} does not implement finalize()")


_REGISTRY: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator; registering a name twice is an error (a typo must not shadow a method)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"pruning method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[PruningMethod]]:
    """All methods, importing the built-in ones on first use."""
    from onnxprune.methods import _load_builtin_methods

    _load_builtin_methods()
    return dict(_REGISTRY)
