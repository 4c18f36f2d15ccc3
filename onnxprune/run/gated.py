"""A prune run with CI gates, a report folder and a latency target around it.

    result, results = gated.run(config, CiOptions.pop_from(values))

1. refuse bad paths before any work (``--out``, ``--report``);
2. one pipeline run, or with ``--target-latency-ms`` a search over the MAC target of a
   structured method (:func:`onnxprune.run.latency_search.search_runs`, one run per round), or
   with a ``--latency-table`` too, one run at the table's predicted fraction;
3. figures from the models: per-layer widths, sizes, the trail; latency of the original and
   the pruned model measured interleaved (when a latency gate is set, or the report is a folder);
4. the gates (:mod:`onnxprune.run.acceptance`); the model goes to ``--out`` when all pass, else to
   ``OUT.rejected.onnx`` and ``--out`` is not written;
5. the report: ``--report DIR`` (json, markdown, plots) or ``--report run.json``.

The caller prints its summary and then calls :func:`onnxprune.run.acceptance.enforce` (exit code 3).
The pipeline writes nothing; :func:`finish` (steps 3-5) is the one place a run's files are written,
for the command line and the Python API (:func:`onnxprune.prune`) alike.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.batching import fixed_batch
from onnxprune.graph.modelio import (
    is_large_model,
    load_model,
    model_size_bytes,
    save_model_atomic,
    stores_external_data,
)
from onnxprune.graph.shapes import parse_input_shapes, random_feeds, resolve_input_shapes
from onnxprune.graph.sparse_storage import to_sparse_storage
from onnxprune.graph.verify import assert_close, run_onnxruntime
from onnxprune.importing.writeback import add_run_metadata
from onnxprune.measure.latency import ProviderUnavailableError, provider_status
from onnxprune.methods._support.latency_table import LatencyTable
from onnxprune.methods.base import registry
from onnxprune.reporting.folder import add_model_figures, read_trail, write_report_files
from onnxprune.reporting.run_report import run_metadata
from onnxprune.run import latency_search, pipeline
from onnxprune.run.acceptance import (
    GateResult,
    Gates,
    evaluate_gates,
    measure_before_after,
    record_gates,
    rejected_path,
)
from onnxprune.run.outputs import REPORT_FILES, RunOutputs, fault_point, report_kind

log = logging.getLogger(__name__)

# keyword value (the prune command's option name) -> (CiOptions field, Gates field or None)
_FIELDS = {
    "min_fidelity": ("gates", "min_fidelity"), "max_accuracy_drop": ("gates", "max_accuracy_drop"),
    "max_latency_ms": ("gates", "max_latency_ms"), "min_speedup": ("gates", "min_speedup"),
    "collapse_agreement": ("gates", "collapse_agreement"), "collapse_error": ("gates", "collapse_error"),
    "latency_provider": ("provider", None), "latency_threads": ("threads", None),
    "latency_seconds": ("seconds", None), "latency_batch": ("batch", None),
    "target_latency_ms": ("target_latency_ms", None), "latency_rounds": ("latency_rounds", None),
}
NAMES = tuple(_FIELDS)  # onnxprune.cli.gate_options declares one option per name


@dataclasses.dataclass(frozen=True)
class CiOptions:
    gates: Gates = dataclasses.field(default_factory=Gates)
    provider: str = "cpu"
    threads: int = 1
    seconds: float = 2.0
    target_latency_ms: float | None = None
    latency_rounds: int = 4
    batch: int = 1  # rows per timed call

    @classmethod
    def pop_from(cls, values: dict[str, Any]) -> CiOptions:
        """Takes this module's options out of a command's keyword arguments (or the API's);
        a value not given keeps its default here."""
        own, gates = {}, {}
        for name in [name for name in NAMES if name in values]:
            field, gate = _FIELDS[name]
            (gates if gate else own)[gate or field] = values.pop(name)
        return cls(gates=Gates(**gates), **own)

    @staticmethod
    def default(name: str) -> Any:
        """The default of keyword value ``name`` (what the command line shows)."""
        field, gate = _FIELDS[name]
        return getattr(Gates() if gate else CiOptions(), gate or field)


def run(config, ci: CiOptions) -> tuple[Any, list[GateResult]]:
    """The gated prune run (module docstring); ``config`` is a ``pipeline.PruneConfig``.
    Returns the pipeline's RunResult (``written`` = where the model went) and the gate results."""
    trail = config.method_options.get("trail")
    outputs = run_outputs(config.model, config.out, config.report, trail, rejected=ci.gates.active)
    outputs.check()  # every output path, before any work
    with outputs:  # the model, the report and the trail: all of them at the end, or nothing
        return _run(config, ci, outputs)


def _run(config, ci: CiOptions, outputs: RunOutputs) -> tuple[Any, list[GateResult]]:
    original = load_model(config.model)  # read once: the checks, the pipeline and the latency share it
    _check_latency_target(config, ci)
    ci = _check_provider(config, ci)
    ci = _check_batch(original, config, ci)
    trail = config.method_options.get("trail")  # the method writes it into a staged folder
    staging = {**config.staging, "trail": os.fspath(outputs.staged(trail))} if trail else config.staging
    inner = dataclasses.replace(config, staging=staging)
    if ci.target_latency_ms is None:
        if is_large_model(original):  # the pipeline reads it again and frees it once the teacher
            del original  # and the figures are done: one copy of the weights less while training
            result = pipeline.run(inner)
        else:
            result = pipeline.run(inner, original)
    else:
        feeds = random_feeds(original, resolve_input_shapes(original, parse_input_shapes(config.input_shapes)))
        started = time.perf_counter()
        run_at = lambda options: pipeline.run(dataclasses.replace(inner, method_options=options), original)
        table = config.method_options.get("latency_table")
        if table:  # the budget is the table's predicted latency: one run instead of a search
            table_ms = LatencyTable(table, provider=ci.provider, batch=ci.batch).model_ms
            result = latency_search.run_from_table(run_at, config.method_options, table_ms, original, feeds,
                                                   ci.target_latency_ms, ci.provider, ci.threads,
                                                   max(ci.seconds, 0.5), ci.batch)
        else:
            result, _ = latency_search.search_runs(run_at, config.method_options, original, feeds,
                                                   ci.target_latency_ms, ci.provider, ci.threads,
                                                   max(ci.seconds, 0.5), ci.latency_rounds, ci.batch)
        if result.replica.is_main:
            result.report.setdefault("phases", {})["latency search (all runs)"] = time.perf_counter() - started
    if not result.replica.is_main:
        return result, []
    return result, finish(result, config, ci, outputs)


def _is_unstructured(config) -> bool:
    """Weight-level pruning (scattered zeros): its summary shows the measured latency, to say
    plainly that dense runtimes do not get faster from it."""
    granularities = registry()[config.method].granularities
    return "weight" in granularities and config.method_options.get("granularity", granularities[0]) == "weight"


def run_outputs(model: str | os.PathLike, out: str | os.PathLike | None, report: str | os.PathLike | None,
                trail: str | os.PathLike | None = None, *, rejected: bool = False) -> RunOutputs:
    """The run's outputs as one transaction (:mod:`onnxprune.run.outputs`): ``--out`` (and, with
    gates, ``OUT.rejected.onnx``), ``--report`` (a folder, or one file named .json) and ``--trail``."""
    outputs = RunOutputs([model])
    outputs.add("--out", out)
    if rejected and out is not None:
        outputs.add("--out (its rejected name)", rejected_path(out))
    if out is not None and stores_external_data(model):  # OUT.onnx.data comes beside it: checked too
        outputs.add("--out (its external data)", f"{os.fspath(out)}.data")
        if rejected:
            outputs.add("--out (its rejected name's external data)", f"{os.fspath(rejected_path(out))}.data")
    outputs.add("--report", report, report_kind(report), REPORT_FILES)
    outputs.add("--trail", trail, "dir")
    return outputs


def check_paths(model: str | os.PathLike, out: str | os.PathLike | None, report: str | os.PathLike | None,
                trail: str | os.PathLike | None = None) -> None:
    """Refuses, before any work, every bad output path (:meth:`RunOutputs.check`): the input,
    another output, a missing or unwritable directory, a device node, fifo or socket, a report
    folder that exists as a file."""
    run_outputs(model, out, report, trail, rejected=out is not None).check()


def _check_latency_target(config, ci: CiOptions) -> None:
    if ci.target_latency_ms is None:
        return
    names = registry()[config.method].option_names()
    if "target_macs" not in names:
        raise OnnxPruneError(f"--target-latency-ms needs a structured method with --target-macs; "
                             f"--method {config.method} has none")
    if config.method_options.get("target_macs") is not None:
        raise OnnxPruneError("give --target-latency-ms or --target-macs, not both")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OnnxPruneError("--target-latency-ms is not supported under torchrun (every process would time "
                             "the models differently)")


def _check_batch(model: onnx.ModelProto, config, ci: CiOptions) -> CiOptions:
    """Before any work: --latency-batch N needs every graph input's first dimension dynamic or N.
    At the default (1) a model with a fixed batch B is timed at B (one call = B samples)."""
    fixed = fixed_batch(model)
    if ci.batch == 1:
        return ci if fixed is None else dataclasses.replace(ci, batch=fixed)
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or not dims:
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0 and dims[0].dim_value != ci.batch:  # -1/0: dynamic
            raise OnnxPruneError(f"--latency-batch {ci.batch}: input {value.name!r} of {config.model} has a fixed "
                                 f"batch dimension {dims[0].dim_value}; use --latency-batch {dims[0].dim_value} "
                                 f"or a model with a dynamic batch")
    return ci


def _check_provider(config, ci: CiOptions) -> CiOptions:
    """Before any work: a latency gate or target on a provider that cannot run here is an error
    (exit 2); a report folder's timing is then skipped with a warning instead."""
    folder = config.report is not None and Path(config.report).suffix.lower() != ".json"
    needed = ci.gates.needs_latency or ci.target_latency_ms is not None
    if ci.provider == "cpu" or not (needed or (folder and ci.seconds > 0)):
        return ci
    usable, reason = provider_status(ci.provider, ci.threads)
    if usable:
        return ci
    if needed:
        raise ProviderUnavailableError(f"--providers {ci.provider}: unavailable ({reason}); latency gates and "
                                       f"--target-latency-ms need it")
    log.warning("--providers %s unavailable (%s): the report has no latency", ci.provider, reason)
    return dataclasses.replace(ci, seconds=0.0)


def finish(result, config, ci: CiOptions, outputs: RunOutputs | None = None) -> list[GateResult]:
    """Steps 3-5 for a pipeline result: figures, gates, then the one place a run's files are
    written: the model with its run metadata (to ``config.out``, or its rejected name when a
    gate misses; sparse storage on request), the report and the trail. Sets ``result.written``
    and ``result.model`` (the model as written, before sparse storage). ``outputs``: the run's
    transaction (committed here); without it one is made and checked for the paths in
    ``config``. The original is ``result.original`` (what latency compares against)."""
    if outputs is None:
        outputs = run_outputs(config.model, config.out, config.report, rejected=True)
        outputs.check()
        with outputs:
            return finish(result, config, ci, outputs)
    report, pruned = result.report, result.model
    phases = report.setdefault("phases", {})
    report["unstructured"] = _is_unstructured(config)
    add_model_figures(report, result.imported.onnx_model, pruned)
    trail = (report.get("method_options") or {}).get("trail")
    if trail:
        report["trail"] = read_trail(outputs.staged_if_declared(trail))
    folder = config.report is not None and Path(config.report).suffix.lower() != ".json"
    if ci.gates.needs_latency or ci.seconds > 0:  # --latency-seconds 0: no latency unless a gate needs it
        started = time.perf_counter()
        # the summary's speedup line only needs a short look; gates and a report folder get the full time
        seconds = ci.seconds if ci.gates.needs_latency or folder else min(ci.seconds, 1.0)
        original = config.model if result.original is None else result.original
        report["latency"] = measure_before_after(original, pruned, result.imported.sample_inputs(), ci.provider,
                                                 ci.threads, max(seconds, 0.5), batch=ci.batch)
        phases["latency"] = time.perf_counter() - started
    fault_point("after-latency")
    results = evaluate_gates(ci.gates, report)
    record_gates(report, results)
    accepted = report["status"] == "accepted"
    result.model = pruned = add_run_metadata(pruned, run_metadata(report))
    out = config.out
    if out is not None:  # the CLI always has --out; a Python caller may only want the report
        stored = _sparse(pruned, result.imported.sample_inputs()) if config.sparse_storage else pruned
        result.written = Path(out if accepted else rejected_path(out))
        if outputs.target(result.written) is None:  # not declared up front: checked now, still before writing
            outputs.add("--out", result.written)
            outputs.check()
        # an input with external data gives an output with external data beside it (OUT.onnx.data)
        staged = save_model_atomic(stored, outputs.staged(result.written),
                                   external_data=stores_external_data(config.model) or None)
        report["size_bytes"]["written"] = model_size_bytes(staged)
    report["output"] = os.fspath(out) if accepted and out is not None else None
    if not accepted and result.written is not None:
        report["rejected_output"] = os.fspath(result.written)
        log.info("gate missed: the model is at %s; %s is not written", result.written, out)
    if config.report is not None:
        write_report_files(report, outputs.staged(config.report))
    fault_point("before-commit")
    outputs.commit()
    return results


def _sparse(pruned: onnx.ModelProto, feeds: Mapping[str, Any]) -> onnx.ModelProto:
    """--sparse-storage: mostly-zero weights as sparse Constants, checked to compute the same."""
    stored = to_sparse_storage(pruned)
    onnx.checker.check_model(stored, full_check=True)
    assert_close(run_onnxruntime(pruned, dict(feeds)), run_onnxruntime(stored, dict(feeds)),
                 what="sparse storage vs dense model")
    return stored


def summary_lines(report: Mapping[str, Any], results: Sequence[GateResult]) -> list[str]:
    """Lines the prune command prints after the run's own summary."""
    lines = []
    latency = report.get("latency")
    if latency:
        lines.append(f"latency     {latency['before']['p50_ms']:.4g} ms -> {latency['after']['p50_ms']:.4g} ms p50 "
                     f"({latency['speedup']:.2f}x, {latency['provider']}, batch {latency['batch']}, "
                     f"{latency['threads']} thread(s))")
    sizes = report.get("size_bytes") or {}
    if "written" in sizes:
        lines.append(f"file        {sizes['before'] / 1024:.1f} KiB -> {sizes['written'] / 1024:.1f} KiB")
    if latency and report.get("unstructured"):
        lines.append("note        scattered zeros do not make dense runtimes (onnxruntime CPU/GPU) faster, as the "
                     "latency shows; use --granularity channel or a structured method for speed, "
                     "--sparse-storage for a smaller file")
    target = report.get("latency_target")
    if target:
        lines.append(f"target      {target['target_ms']:.4g} ms {'met' if target['met'] else 'NOT met'} after "
                     f"{len(target['curve'])} run(s)")
    for result in results:
        lines.append(f"gate        {result.describe()}")
    return lines
