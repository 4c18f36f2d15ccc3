"""The Python API: the four commands as functions, with the command line's behaviour.

    import onnxprune

    result = onnxprune.prune("model.onnx", "small.onnx", method="lagrangian", calib="data.npz",
                             target_macs=0.5, epochs=5)
    result.accepted, result.written, result.report["macs"]      # the run report, as --report writes it
    onnxprune.inspect("small.onnx")["total_macs"]
    onnxprune.apply("model.onnx", "plan.json", "smaller.onnx").macs
    onnxprune.bench(["model.onnx", "small.onnx"])[1]["speedup"]

Keyword options are the command line's long options with underscores (``target_macs`` for
``--target-macs``, ``min_fidelity`` for the gate ``--min-fidelity``); an unknown one, or one that
belongs to another method, raises :class:`onnxprune.errors.OnnxPruneError` naming it. Every user
error is an ``OnnxPruneError`` whose message is the line the command prints. The input is only
read; outputs are written as one transaction (all or nothing), exactly as by the command line,
and a run whose model misses a gate (the collapse check is on by default) writes it to
``OUT.rejected.onnx`` and returns ``accepted=False`` instead of exiting with code 3.

Each function imports what it needs when called, so ``import onnxprune`` stays light and works
on a torch-free install, where :func:`bench` is what runs (docs/target-install.md).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxprune.errors import OnnxPruneError

PathLike = str | os.PathLike


@dataclasses.dataclass
class PruneResult:
    """What :func:`prune` did."""

    model: onnx.ModelProto  # the pruned, verified model as written (with its run metadata)
    report: dict[str, Any]  # the run report (docs/usage.md, "The run report")
    written: Path | None  # where the model went: ``out``, its rejected name, or None without ``out``
    gates: list  # onnxprune.run.acceptance.GateResult, collapse check first
    plan: Any  # the method's onnxprune.passes.plan.PruningPlan

    @property
    def accepted(self) -> bool:
        return self.report.get("status") == "accepted"


@dataclasses.dataclass
class ApplyResult:
    """What :func:`apply` did: the pruned model and its cost before and after."""

    model: onnx.ModelProto
    written: Path | None
    macs: tuple[int, int]  # (before, after), per call at the resolved input shapes
    params: tuple[int, int]


_TRAIN = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "seed", "device", "quiet")
_RUN = ("labels", "holdout", "loss", "temperature", "sparse_storage", "tokenizer", "seq_len", "distill_loss",
        "prune_hidden_size")
_IMAGES = ("mean", "std", "channel_order", "layout")


def prune(model: PathLike, out: PathLike | None = None, *, method: str, calib: str | None = None,
          report: PathLike | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
          **options: Any) -> PruneResult:
    """Prune ``model`` with ``method`` on ``calib`` and write ``out`` (and ``report``: a folder, or
    one file named .json). ``options``: training (epochs, lr, batch_size, ...), data (labels,
    holdout, loss, temperature, mean, std, ...), gates and latency (min_fidelity, min_speedup,
    collapse_agreement, target_latency_ms, ...), ``sparse_storage``, and the method's own options."""
    from onnxprune.methods.base import registry
    from onnxprune.run import gated, pipeline
    from onnxprune.training.loop import TrainConfig

    methods = registry()
    if method not in methods:
        raise OnnxPruneError(f"method {method!r}: unknown; available: {', '.join(sorted(methods))}")
    values = dict(options)
    ci = gated.CiOptions.pop_from(values)
    train = TrainConfig(**{"quiet": True, **{k: values.pop(k) for k in _TRAIN if k in values}})
    run = {k: values.pop(k) for k in _RUN if k in values}
    images = {"mean": 0.0, "std": 1.0, "channel_order": "rgb", "layout": "auto",
              **{k: values.pop(k) for k in _IMAGES if k in values}}
    own = methods[method].option_names()
    unknown = sorted(set(values) - own)
    if unknown:
        others = {name: sorted(m for m, cls in methods.items() if name in cls.option_names())
                  for name in unknown}
        said = [f"{name} (an option of {', '.join(others[name])})" if others[name] else name for name in unknown]
        raise OnnxPruneError(f"prune(method={method!r}): unknown option(s) {', '.join(said)}; "
                             f"{method}'s own: {', '.join(sorted(own)) or 'none'}")
    shapes = tuple(f"{name}={'x'.join(str(d) for d in dims)}" for name, dims in (input_shapes or {}).items())
    config = pipeline.PruneConfig(
        model=Path(model), out=None if out is None else Path(out), method=method, method_options=values,
        calib=calib, image_options=images, input_shapes=shapes, train=train,
        report=None if report is None else Path(report), options={"method": method, **options},
        **run)
    result, gates = gated.run(pipeline.with_data_shapes(config), ci)  # --seq-len / token data fix dynamic axes
    return PruneResult(result.model, result.report, result.written, gates, result.plan)


def apply(model: PathLike | onnx.ModelProto, plan: PathLike | Any = None, out: PathLike | None = None, *,
          input_shapes: Mapping[str, Sequence[int]] | None = None) -> ApplyResult:
    """Physically remove what ``plan`` (a PruningPlan or its JSON file; None: nothing planned)
    names, and every channel whose weights are all zero, from ``model``; write ``out`` if given.
    The plan's ids refer to the normalized graph, as ``inspect`` shows them."""
    from onnxprune.graph.macs import count_macs, count_params
    from onnxprune.graph.modelio import load_model, save_model_atomic, stores_external_data
    from onnxprune.graph.shapes import resolve_input_shapes
    from onnxprune.importing.normalize import normalize
    from onnxprune.passes import PruningPlan, analyze, apply_plan
    from onnxprune.run.outputs import RunOutputs

    sources = [] if isinstance(model, onnx.ModelProto) else [model]
    outputs = RunOutputs(sources)
    outputs.add("--out", out)
    if out is not None and stores_external_data(model):  # OUT.onnx.data comes beside it: checked too
        outputs.add("--out (its external data)", f"{os.fspath(out)}.data")
    outputs.check()  # a bad output path before any work
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    params_before = count_params(original)
    normalized = normalize(original)
    del original  # a model read here is not needed again: its memory goes before the passes run
    shapes = resolve_input_shapes(normalized, _shapes(input_shapes))
    if plan is None:
        plan = PruningPlan()
    elif not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    analysis = analyze(normalized, shapes, hidden_size=bool(plan.meta.get("hidden_size", False)))
    analysis.validate(plan)  # refuse a bad plan before any work or any file
    pruned = apply_plan(normalized, plan, shapes, analysis=analysis)
    before, after = count_macs(normalized, shapes), count_macs(pruned, shapes)
    written = None
    if out is not None:
        with outputs:
            # an input with external data gives an output with external data beside it
            save_model_atomic(pruned, outputs.staged(out), external_data=stores_external_data(model) or None)
            outputs.commit()
        written = Path(out)
    # params before: the input as given (normalizing unties shared weights, which is not the
    # user's model); after: the written model
    return ApplyResult(pruned, written, (before.total_macs, after.total_macs),
                       (params_before, count_params(pruned)))


def inspect(model: PathLike | onnx.ModelProto, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
            plan: PathLike | Any = None, import_check: bool = True) -> dict[str, Any]:
    """What ``onnxprune inspect --json`` prints: per-layer MACs and params, channel groups and why
    a group cannot be pruned, residual branches, totals, the import check, and what ``plan`` removes."""
    from onnxprune.graph.modelio import load_model
    from onnxprune.graph.shapes import resolve_input_shapes
    from onnxprune.reporting.inspection import inspection_report

    loaded = model if isinstance(model, onnx.ModelProto) else load_model(model)
    shapes = resolve_input_shapes(loaded, _shapes(input_shapes))
    return inspection_report(loaded, shapes, plan=plan, import_check=import_check)


def bench(models: Sequence[PathLike], *, providers: Sequence[str] = ("cpu",), batches: Sequence[int] | None = None,
          threads: int | None = None, seconds: float = 3.0, min_runs: int = 20, warmup: int = 5,
          input_shapes: Mapping[str, Sequence[int]] | None = None, calib: str | None = None,
          seed: int = 0) -> list[dict[str, Any]]:
    """What ``onnxprune bench --json`` prints as ``results``: one row per (provider, batch, model),
    timed interleaved, with ``speedup`` = p50 of the first model / p50 of this one. Torch-free."""
    from onnxprune.measure.compare import compare_models

    return compare_models([os.fspath(m) for m in models], providers=providers, batches=batches, threads=threads,
                          seconds=seconds, min_runs=min_runs, warmup=warmup, input_shapes=_shapes(input_shapes),
                          calib=calib, seed=seed)


def _shapes(input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()}
