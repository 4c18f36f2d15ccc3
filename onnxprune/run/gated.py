"""A prune run with CI gates, a report folder and a latency target around it.

    result, results = ci.run(config, CiOptions.pop_from(values))

1. refuse bad paths before any work (``--out``, ``--report``);
2. one pipeline run, or with ``--target-latency-ms`` a search over the MAC target of a
   structured method (:func:`onnxprune.run.latency_search.search_runs`, one run per round);
3. figures from the models: per-layer widths, sizes, the trail; latency of the original and
   the pruned model measured interleaved (when a latency gate is set, or the report is a folder);
4. the gates (:mod:`onnxprune.run.acceptance`); the model goes to ``--out`` when all pass, else to
   ``OUT.rejected.onnx`` and ``--out`` is not written;
5. the report: ``--report DIR`` (json, markdown, plots) or ``--report run.json``.

The caller prints its summary and then calls :func:`onnxprune.run.acceptance.enforce` (exit code 3).
The pipeline itself runs with ``out=None, report=None``; this module writes both.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import onnx

from onnxprune.bench.latency import PROVIDERS
from onnxprune.errors import OnnxPruneError
from onnxprune.run import latency_search as latency_target
from onnxprune.run.acceptance import (
    COLLAPSE_AGREEMENT,
    COLLAPSE_ERROR,
    GateResult,
    Gates,
    evaluate_gates,
    measure_before_after,
    record_gates,
    rejected_path,
)
from onnxprune.run.outputs import REPORT_FILES, RunOutputs, fault_point, report_kind

log = logging.getLogger(__name__)

OPTIONS = [
    click.Option(["--min-fidelity"], type=click.FloatRange(0.0, 1.0), default=None, metavar="F",
                 help="CI gate: top-1 agreement with the original on the holdout must be >= F (e.g. 0.98)."),
    click.Option(["--max-accuracy-drop"], type=click.FloatRange(0.0, 1.0), default=None, metavar="D",
                 help="CI gate: holdout accuracy may drop by at most D (fraction: 0.01 = one point; needs labels)."),
    click.Option(["--max-latency-ms"], type=click.FloatRange(0.0, min_open=True), default=None, metavar="MS",
                 help="CI gate: p50 latency of the pruned model (one call of --latency-batch rows, --providers) "
                      "must be <= MS."),
    click.Option(["--min-speedup"], type=click.FloatRange(0.0, min_open=True), default=None, metavar="S",
                 help="CI gate: p50 latency of the original / of the pruned model must be >= S."),
    click.Option(["--collapse-agreement"], type=click.FloatRange(0.0, 1.0), default=COLLAPSE_AGREEMENT,
                 show_default=True, metavar="F",
                 help="Collapse check, on by default: holdout top-1 agreement below F rejects the model (0 = off)."),
    click.Option(["--collapse-error"], type=click.FloatRange(0.0), default=COLLAPSE_ERROR, show_default=True,
                 metavar="E",
                 help="Collapse check for models without class logits: relative output error above E rejects "
                      "the model (0 = off)."),
    click.Option(["--providers", "latency_provider"], type=click.Choice(PROVIDERS), default="cpu",
                 help="Execution provider latency is measured on (gates, report, --target-latency-ms)."),
    click.Option(["--latency-threads"], type=click.IntRange(1), default=1,
                 help="onnxruntime intra-op threads for latency measurements."),
    click.Option(["--latency-seconds"], type=click.FloatRange(0.0), default=2.0,
                 help="Seconds spent timing each comparison; 0 leaves latency out of a report folder "
                      "unless a latency gate needs it."),
    click.Option(["--latency-batch"], type=click.IntRange(1), default=1, metavar="N",
                 help="Rows per timed call (gates, report, --target-latency-ms). Small models are dominated by "
                      "the fixed per-call overhead at batch 1; a larger batch times their compute. Needs a "
                      "dynamic (or equal) batch dimension."),
    *latency_target.OPTIONS,
]
"""The prune command's options for gates, latency and latency targets (exit code 3 on a miss)."""

NAMES = tuple(option.name for option in OPTIONS)


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
        """Takes this module's options out of a command's keyword arguments."""
        v = {name: values.pop(name) for name in NAMES if name in values}
        return cls(Gates(v.get("min_fidelity"), v.get("max_accuracy_drop"), v.get("max_latency_ms"),
                         v.get("min_speedup"), v.get("collapse_agreement", COLLAPSE_AGREEMENT),
                         v.get("collapse_error", COLLAPSE_ERROR)),
                   v.get("latency_provider", "cpu"), v.get("latency_threads", 1), v.get("latency_seconds", 2.0),
                   v.get("target_latency_ms"), v.get("latency_rounds", 4), v.get("latency_batch", 1))


def run(config, ci: CiOptions) -> tuple[Any, list[GateResult]]:
    """The gated prune run (module docstring); ``config`` is a ``pipeline.PruneConfig``.
    Returns the pipeline's RunResult (``written`` = where the model went) and the gate results."""
    trail = config.method_options.get("trail")
    outputs = run_outputs(config.model, config.out, config.report, trail, rejected=ci.gates.active)
    outputs.check()  # every output path, before any work
    with outputs:  # the model, the report and the trail: all of them at the end, or nothing
        return _run(config, ci, outputs)


def _run(config, ci: CiOptions, outputs: RunOutputs) -> tuple[Any, list[GateResult]]:
    from onnxprune.run import pipeline

    _check_latency_target(config, ci)
    ci = _check_provider(config, ci)
    ci = _check_batch(config, ci)
    trail = config.method_options.get("trail")  # the method writes it into a staged folder
    staging = {**config.staging, "trail": os.fspath(outputs.staged(trail))} if trail else config.staging
    inner = dataclasses.replace(config, out=None, report=None, staging=staging)
    if ci.target_latency_ms is None:
        result = pipeline.run(inner)
        original = config.model  # read again only if latency is measured
    else:
        original, feeds = _original_and_feeds(config)
        started = time.perf_counter()
        result, _ = latency_target.search_runs(
            lambda options: pipeline.run(dataclasses.replace(inner, method_options=options)),
            config.method_options, original, feeds, ci.target_latency_ms, ci.provider, ci.threads,
            max(ci.seconds, 0.5), ci.latency_rounds, ci.batch)
        if result.replica.is_main:
            result.report.setdefault("phases", {})["latency search (all runs)"] = time.perf_counter() - started
    if not result.replica.is_main:
        return result, []
    result.written, results = conclude(
        result.report, original=original, normalized=result.imported.onnx_model, pruned=result.model,
        feeds=result.imported.sample_inputs(), out=config.out, input_path=config.model,
        report_path=config.report, ci=ci, sparse_storage=config.sparse_storage,
        time_latency=_is_unstructured(config), outputs=outputs)
    return result, results


def _is_unstructured(config) -> bool:
    """Weight-level pruning (scattered zeros): its summary shows the measured latency, to say
    plainly that dense runtimes do not get faster from it."""
    from onnxprune.methods.base import registry

    granularities = registry()[config.method].granularities
    return "weight" in granularities and config.method_options.get("granularity", granularities[0]) == "weight"


def _original_and_feeds(config) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The original model and random inputs at the shapes the pipeline resolves the same way."""
    from onnxprune.graph.modelio import load_model
    from onnxprune.graph.shapes import parse_input_shapes, random_feeds, resolve_input_shapes

    original = load_model(config.model)
    return original, random_feeds(original, resolve_input_shapes(original, parse_input_shapes(config.input_shapes)))


def run_outputs(model: str | os.PathLike, out: str | os.PathLike | None, report: str | os.PathLike | None,
                trail: str | os.PathLike | None = None, *, rejected: bool = False) -> RunOutputs:
    """The run's outputs as one transaction (:mod:`onnxprune.run.outputs`): ``--out`` (and, with
    gates, ``OUT.rejected.onnx``), ``--report`` (a folder, or one file named .json) and ``--trail``."""
    outputs = RunOutputs([model])
    outputs.add("--out", out)
    if rejected and out is not None:
        outputs.add("--out (its rejected name)", rejected_path(out))
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
    from onnxprune.methods.base import registry

    names = {option.name for option in registry()[config.method].options}
    if "target_macs" not in names:
        raise OnnxPruneError(f"--target-latency-ms needs a structured method with --target-macs; "
                             f"--method {config.method} has none")
    if config.method_options.get("target_macs") is not None:
        raise OnnxPruneError("give --target-latency-ms or --target-macs, not both")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OnnxPruneError("--target-latency-ms is not supported under torchrun (every process would time "
                             "the models differently)")


def _check_batch(config, ci: CiOptions) -> CiOptions:
    """Before any work: --latency-batch N needs every graph input's first dimension dynamic or N.
    At the default (1) a model with a fixed batch B is timed at B (one call = B samples)."""
    from onnxprune.graph.batching import fixed_batch
    from onnxprune.graph.modelio import load_model

    model = load_model(config.model)
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
    from onnxprune.bench.latency import ProviderUnavailableError, provider_status

    usable, reason = provider_status(ci.provider, ci.threads)
    if usable:
        return ci
    if needed:
        raise ProviderUnavailableError(f"--providers {ci.provider}: unavailable ({reason}); latency gates and "
                                       f"--target-latency-ms need it")
    log.warning("--providers %s unavailable (%s): the report has no latency", ci.provider, reason)
    return dataclasses.replace(ci, seconds=0.0)


def conclude(report: dict[str, Any], *, original: onnx.ModelProto | str | os.PathLike, normalized: onnx.ModelProto,
             pruned: onnx.ModelProto, feeds: Mapping[str, Any], out: str | os.PathLike | None,
             input_path: str | os.PathLike, report_path: str | os.PathLike | None,
             ci: CiOptions, sparse_storage: bool = False,
             time_latency: bool = False, outputs: RunOutputs | None = None) -> tuple[Path | None, list[GateResult]]:
    """Figures, gates, the model (to ``out`` or its rejected name) and the report; steps 3-5.
    ``original`` (model or path) is what latency compares against; ``normalized`` is the
    imported original, whose initializer names the pruned model keeps (for the widths).
    ``outputs``: the run's transaction (committed here); without it one is made for ``out``
    and ``report_path``."""
    if outputs is None:
        outputs = run_outputs(input_path, out, report_path, rejected=True)
        outputs.check()
        with outputs:
            return conclude(report, original=original, normalized=normalized, pruned=pruned, feeds=feeds, out=out,
                            input_path=input_path, report_path=report_path, ci=ci, sparse_storage=sparse_storage,
                            time_latency=time_latency, outputs=outputs)
    from onnxprune.graph.modelio import save_model_atomic
    from onnxprune.reporting.folder import add_model_figures, read_trail, write_report

    phases = report.setdefault("phases", {})
    report["unstructured"] = time_latency
    add_model_figures(report, normalized, pruned)
    trail = (report.get("method_options") or {}).get("trail")
    if trail:
        report["trail"] = read_trail(outputs.staged_if_declared(trail))
    folder = report_path is not None and Path(report_path).suffix.lower() != ".json"
    if ci.gates.needs_latency or ((folder or time_latency) and ci.seconds > 0):
        started = time.perf_counter()
        # the summary's latency line for weight-level methods only needs a short look
        seconds = ci.seconds if ci.gates.needs_latency or folder else min(ci.seconds, 1.0)
        report["latency"] = measure_before_after(original, pruned, feeds, ci.provider, ci.threads, max(seconds, 0.5),
                                                 batch=ci.batch)
        phases["latency"] = time.perf_counter() - started
    fault_point("after-latency")
    results = evaluate_gates(ci.gates, report)
    record_gates(report, results)
    accepted = report["status"] == "accepted"
    written = None
    if out is not None:  # the CLI always has --out; a Python caller may only want the report
        stored = _sparse(pruned, feeds) if sparse_storage else pruned
        written = Path(out if accepted else rejected_path(out))
        if outputs.target(written) is None:  # not declared up front: checked now, still before writing
            outputs.add("--out", written)
            outputs.check()
        staged = save_model_atomic(stored, outputs.staged(written))
        report["size_bytes"]["written"] = staged.stat().st_size
    report["output"] = os.fspath(out) if accepted and out is not None else None
    if not accepted and written is not None:
        report["rejected_output"] = os.fspath(written)
        log.info("gate missed: the model is at %s; %s is not written", written, out)
    if report_path is not None:
        write_report(report, outputs.staged(report_path))
    fault_point("before-commit")
    outputs.commit()
    return written, results


def _sparse(pruned: onnx.ModelProto, feeds: Mapping[str, Any]) -> onnx.ModelProto:
    """--sparse-storage: mostly-zero weights as sparse Constants, checked to compute the same."""
    from onnxprune.graph.sparse_storage import to_sparse_storage
    from onnxprune.graph.verify import assert_close, run_onnxruntime

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
