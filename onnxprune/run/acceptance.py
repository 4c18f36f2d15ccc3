"""CI gates: thresholds a prune run must meet before its model is accepted.

    --min-fidelity F        top-1 agreement with the original on the holdout  >= F
    --max-accuracy-drop D   original accuracy - pruned accuracy (holdout)     <= D
    --max-latency-ms T      p50 latency of the pruned model (one call of
                            --latency-batch rows, default 1)                  <= T
    --min-speedup S         p50(original) / p50(pruned), same provider,
                            measured interleaved                              >= S

One gate is on by default, the collapse check (``--collapse-agreement``, ``--collapse-error``):
a model whose holdout top-1 agreement with the original is below 0.5 (models with a class-logits
output), or whose relative output error ||y - y0|| / ||y0|| is above 0.5 (models without one),
has collapsed, not degraded: a pruned ImageNet MobileNetV2 that gave one class for every input
(8% agreement) used to be reported as success. 0 switches either check off. Relative error is
not used on logits: training rescales them (digits samples: 99% agreement at rel. error 0.46).

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

import onnx

from onnxprune.errors import GateFailedError, OnnxPruneError
from onnxprune.measure.latency import measure_latency

log = logging.getLogger(__name__)

LATENCY_BATCH = 1  # rows per timed call unless --latency-batch says otherwise
COLLAPSE_AGREEMENT = 0.5  # default collapse check (module docstring); 0 = off
COLLAPSE_ERROR = 0.5


@dataclasses.dataclass(frozen=True)
class Gates:
    """The thresholds; ``None`` = gate not set."""

    min_fidelity: float | None = None
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    collapse_agreement: float | None = COLLAPSE_AGREEMENT
    collapse_error: float | None = COLLAPSE_ERROR

    def __post_init__(self) -> None:
        for name in ("min_fidelity", "max_accuracy_drop", "collapse_agreement"):
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

    def describe(self, verdict: bool = True) -> str:
        """``--min-speedup 1.30x: measured 1.12x, missed`` (without ``, missed`` if not ``verdict``)."""
        if self.measured is None:
            text = f"{self.name} {_fmt(self.threshold, self.unit)}: not measured ({self.note})"
        else:
            text = f"{self.name} {_fmt(self.threshold, self.unit)}: measured {_fmt(self.measured, self.unit)}"
        return f"{text}, {'ok' if self.passed else 'missed'}" if verdict else text

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
    results = _collapse_checks(gates, pruned)
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


def _collapse_checks(gates: Gates, pruned: Mapping[str, Any]) -> list[GateResult]:
    """The default collapse check: top-1 agreement where there are class logits, else the
    relative output error; nothing when the figure is absent or the check is off."""
    agreement, error = pruned.get("top1_agreement"), pruned.get("rel_error")
    if agreement is not None:
        if not gates.collapse_agreement:
            return []
        return [GateResult("--collapse-agreement", gates.collapse_agreement, float(agreement),
                           float(agreement) >= gates.collapse_agreement, "", "collapse")]
    if error is not None and gates.collapse_error:
        return [GateResult("--collapse-error", gates.collapse_error, float(error),
                           float(error) <= gates.collapse_error, "", "collapse")]
    return []


def record_gates(report: dict[str, Any], results: Sequence[GateResult]) -> None:
    """Adds ``gates`` (one dict per gate) and ``status`` ("accepted" / "rejected") to the report."""
    report["gates"] = [r.to_dict() for r in results]
    report["status"] = "accepted" if all(r.passed for r in results) else "rejected"


def enforce(results: Sequence[GateResult]) -> None:
    """Raises GateFailedError (exit code 3) naming every missed gate and its figures."""
    missed = [r for r in results if not r.passed]
    collapsed = [r for r in missed if r.note == "collapse"]
    if collapsed:
        raise GateFailedError(f"the pruned model has collapsed ({collapsed[0].describe(verdict=False)}); "
                              f"it was not written as the output. Try more epochs, more calibration data, a "
                              f"milder target or a lower --lr; {collapsed[0].name} 0 switches this check off")
    if missed:
        raise GateFailedError(f"{len(missed)} of {len(results)} gates missed: "
                              + "; ".join(r.describe(verdict=False) for r in missed))


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
    batch: int = LATENCY_BATCH,
) -> dict[str, Any]:
    """Times both models interleaved, one call = ``batch`` rows, on ``provider`` (see onnxprune.measure.latency).

    Returns the report's ``latency`` section: ``provider``, ``threads``, ``batch``, ``seconds``,
    ``before`` and ``after`` (each a LatencyStats dict: p50_ms, p90_ms, mean_ms, ...) and
    ``speedup`` = before p50 / after p50.
    """
    before, after = measure_latency([original, pruned], feeds, provider=provider, threads=threads,
                                    batch=batch, seconds=seconds, min_runs=min_runs,
                                    names=["original", "pruned"])
    speedup = before.p50_ms / after.p50_ms if after.p50_ms > 0 else None
    log.info("latency on %s: %.4g ms -> %.4g ms (p50, batch %d), speedup %.2fx", provider, before.p50_ms,
             after.p50_ms, batch, speedup or float("nan"))
    return {"provider": before.provider, "threads": before.threads, "batch": batch, "seconds": seconds,
            "before": before.to_dict(), "after": after.to_dict(), "speedup": speedup}
