"""CI gates: thresholds a prune run must meet before its model is accepted.

    --min-fidelity F        top-1 agreement with the original on the holdout  >= F
    --max-accuracy-drop D   original accuracy - pruned accuracy (holdout)     <= D
    --max-latency-ms T      p50 latency of the pruned model, batch 1          <= T
    --min-speedup S         p50(original) / p50(pruned), same provider,
                            measured interleaved                              >= S

Fractions are fractions (``--min-fidelity 0.98``, ``--max-accuracy-drop 0.01`` = one point).
Figures come from the run report: ``report["pruned"]["top1_agreement"]``,
``report["accuracy_drop"]`` and ``report["latency"]`` (written by :func:`measure_before_after`).
A gate whose figure the run could not measure (fidelity of a model without a class-logits
output, accuracy without labels) counts as missed: a CI gate that silently passes is worse
than one that fails loudly.

On a miss the run still writes its report (with ``report["gates"]`` and ``status: rejected``),
does not write OUT.onnx, writes the model to :func:`rejected_path` (``OUT.rejected.onnx``) for
inspection, and :func:`enforce` raises :class:`~onnxprune.errors.GateFailedError` (exit code 3).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import onnx

from onnxprune.errors import GateFailedError, OnnxPruneError
from onnxprune.latency import PROVIDERS

log = logging.getLogger(__name__)

LATENCY_BATCH = 1


@dataclasses.dataclass(frozen=True)
class Gates:
    """The thresholds; ``None`` = gate not set."""

    min_fidelity: float | None = None
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    min_speedup: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_fidelity", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise OnnxPruneError(f"--{name.replace('_', '-')} {value}: expected a fraction in [0, 1]")
        for name in ("max_latency_ms", "min_speedup"):
            value = getattr(self, name)
            if value is not None and not value > 0.0:
                raise OnnxPruneError(f"--{name.replace('_', '-')} {value}: expected a positive number")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    @property
    def needs_latency(self) -> bool:
        """Whether the run must time the original and pruned models."""
        return self.max_latency_ms is not None or self.min_speedup is not None


@dataclasses.dataclass(frozen=True)
class GateResult:
    name: str  # the option, e.g. "--min-fidelity"
    threshold: float
    measured: float | None  # None: the run could not measure it (counts as missed)
    passed: bool
    unit: str = ""  # "", "ms" or "x"; fractions print as percentages
    note: str = ""  # why a figure is missing

    def describe(self) -> str:
        if self.measured is None:
            return f"{self.name} {_fmt(self.threshold, self.unit)}: not measured ({self.note})"
        relation = ">=" if self.name.startswith("--min") else "<="
        verdict = "ok" if self.passed else "missed"
        return f"{self.name}: {_fmt(self.measured, self.unit)} (needs {relation} {_fmt(self.threshold, self.unit)}) {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3g} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.2%}"


def evaluate_gates(gates: Gates, report: Mapping[str, Any]) -> list[GateResult]:
    """One result per gate that is set, in option order; reads only ``report``."""
    pruned = report.get("pruned") or {}
    latency = report.get("latency") or {}
    after = latency.get("after") or {}
    checks = [
        ("--min-fidelity", gates.min_fidelity, pruned.get("top1_agreement"), "",
         "the model has no class-logits output [N, C] to compare top-1 on"),
        ("--max-accuracy-drop", gates.max_accuracy_drop, report.get("accuracy_drop"), "",
         "the calibration data has no labels"),
        ("--max-latency-ms", gates.max_latency_ms, after.get("p50_ms"), "ms", "latency was not measured"),
        ("--min-speedup", gates.min_speedup, latency.get("speedup"), "x", "latency was not measured"),
    ]
    results = []
    for name, threshold, measured, unit, why in checks:
        if threshold is None:
            continue
        if measured is None:
            results.append(GateResult(name, threshold, None, False, unit, why))
            continue
        measured = float(measured)
        passed = measured >= threshold if name.startswith("--min") else measured <= threshold
        results.append(GateResult(name, threshold, measured, passed, unit))
    return results


def record_gates(report: dict[str, Any], results: Sequence[GateResult]) -> None:
    """Adds ``gates`` (one dict per gate) and ``status`` ("accepted" / "rejected") to the report."""
    report["gates"] = [r.to_dict() for r in results]
    report["status"] = "accepted" if all(r.passed for r in results) else "rejected"


def enforce(results: Sequence[GateResult]) -> None:
    """Raises GateFailedError (exit code 3) naming every missed gate and its figures."""
    missed = [r for r in results if not r.passed]
    if missed:
        raise GateFailedError("gate missed: " + "; ".join(r.describe() for r in missed))


def rejected_path(out: str | os.PathLike) -> Path:
    """Where a model that missed a gate goes: ``small.onnx`` -> ``small.rejected.onnx``."""
    out = Path(out)
    stem = out.stem if out.suffix == ".onnx" else out.name
    return out.with_name(f"{stem}.rejected.onnx")


def measure_before_after(
    original: onnx.ModelProto | str | os.PathLike,
    pruned: onnx.ModelProto | str | os.PathLike,
    feeds: Mapping[str, Any],
    provider: str = "cpu",
    threads: int | None = 1,
    seconds: float = 2.0,
    min_runs: int = 20,
) -> dict[str, Any]:
    """Times both models interleaved at batch 1 on ``provider`` (see onnxprune.latency).

    Returns the report's ``latency`` section: ``provider``, ``threads``, ``batch``, ``seconds``,
    ``before`` and ``after`` (each a LatencyStats dict: p50_ms, p90_ms, mean_ms, ...) and
    ``speedup`` = before p50 / after p50.
    """
    from onnxprune.latency import measure_latency

    before, after = measure_latency([original, pruned], feeds, provider=provider, threads=threads,
                                    batch=LATENCY_BATCH, seconds=seconds, min_runs=min_runs,
                                    names=["original", "pruned"])
    speedup = before.p50_ms / after.p50_ms if after.p50_ms > 0 else None
    log.info("latency on %s: %.4g ms -> %.4g ms (p50, batch 1), speedup %.2fx", provider, before.p50_ms,
             after.p50_ms, speedup or float("nan"))
    return {"provider": before.provider, "threads": before.threads, "batch": LATENCY_BATCH, "seconds": seconds,
            "before": before.to_dict(), "after": after.to_dict(), "speedup": speedup}


# --- command-line options and the end of a gated run ------------------------------------------

OPTIONS = [
    click.Option(["--min-fidelity"], type=click.FloatRange(0.0, 1.0), default=None, metavar="F",
                 help="CI gate: top-1 agreement with the original on the holdout must be >= F (e.g. 0.98)."),
    click.Option(["--max-accuracy-drop"], type=click.FloatRange(0.0, 1.0), default=None, metavar="D",
                 help="CI gate: holdout accuracy may drop by at most D (fraction: 0.01 = one point; needs labels)."),
    click.Option(["--max-latency-ms"], type=click.FloatRange(0.0, min_open=True), default=None, metavar="MS",
                 help="CI gate: p50 latency of the pruned model (batch 1, --providers) must be <= MS."),
    click.Option(["--min-speedup"], type=click.FloatRange(0.0, min_open=True), default=None, metavar="S",
                 help="CI gate: p50 latency of the original / the pruned model must be >= S."),
    click.Option(["--providers"], "latency_provider", type=click.Choice(PROVIDERS), default="cpu",
                 help="Execution provider that latency (gates, report, --target-latency-ms) is measured on."),
    click.Option(["--latency-threads"], type=click.IntRange(1), default=1,
                 help="onnxruntime intra-op threads for latency measurements."),
    click.Option(["--latency-seconds"], type=click.FloatRange(0.0), default=2.0,
                 help="Time spent timing each comparison (0: no latency in a report folder unless a gate needs it)."),
]
"""Options the prune command adds (``command.params.extend(gates.OPTIONS)``); the exit code of a
missed gate is 3."""


@dataclasses.dataclass(frozen=True)
class LatencySpec:
    provider: str = "cpu"
    threads: int = 1
    seconds: float = 2.0


def check_report_path(report_path: str | os.PathLike | None, model_path: str | os.PathLike) -> None:
    """Refuses, before any work, a --report that is the input, or a folder (no .json suffix) that
    is an existing file, or a .json whose directory does not exist."""
    if report_path is None:
        return
    path = Path(report_path)
    if path.resolve() == Path(model_path).resolve():
        raise OnnxPruneError(f"--report {path} is the input file; choose another path")
    if path.suffix.lower() == ".json":
        if not path.resolve().parent.is_dir():
            raise OnnxPruneError(f"--report {path}: directory {path.parent} does not exist")
    elif path.exists() and not path.is_dir():
        raise OnnxPruneError(f"--report {path}: exists and is not a directory (a .json name writes one file)")


def conclude(
    report: dict[str, Any],
    *,
    original: onnx.ModelProto,
    normalized: onnx.ModelProto,
    pruned: onnx.ModelProto,
    feeds: Mapping[str, Any],
    out: str | os.PathLike,
    input_path: str | os.PathLike,
    report_path: str | os.PathLike | None,
    gates: Gates,
    latency: LatencySpec = LatencySpec(),
) -> Path:
    """The end of a verified prune run: figures (widths, sizes, latency), gates, then the model
    to ``out`` (or to :func:`rejected_path` on a miss), the report, and GateFailedError on a miss.

    ``normalized`` is the imported original (same initializer names as ``pruned``); ``feeds``
    one batch of inputs for timing. Returns the path the model was written to.
    """
    import time

    from onnxprune.modelio import save_model_atomic
    from onnxprune.report_dir import add_model_figures, read_trail, write_report

    phases = report.setdefault("phases", {})
    add_model_figures(report, normalized, pruned)
    trail = (report.get("method_options") or {}).get("trail")
    if trail:
        report["trail"] = read_trail(trail)
    folder = report_path is not None and Path(report_path).suffix.lower() != ".json"
    if gates.needs_latency or (folder and latency.seconds > 0):
        started = time.perf_counter()
        report["latency"] = measure_before_after(original, pruned, feeds, latency.provider, latency.threads,
                                                 max(latency.seconds, 0.5))
        phases["latency"] = time.perf_counter() - started
    results = evaluate_gates(gates, report)
    record_gates(report, results)
    accepted = report["status"] == "accepted"
    target = Path(out) if accepted else rejected_path(out)
    written = save_model_atomic(pruned, target, input_path=input_path)
    report["output"] = os.fspath(out) if accepted else None
    if not accepted:
        report["rejected_output"] = os.fspath(written)
        log.warning("gate missed: the model is at %s, %s is not written", written, out)
    if report_path is not None:
        write_report(report, report_path)
    enforce(results)
    return written
