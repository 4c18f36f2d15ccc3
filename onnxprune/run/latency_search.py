"""``--target-latency-ms T``: prune until the *measured* latency meets T, for any structured method.

The controller knows nothing of the method. It calls ``prune_at(f)`` (a pruned model at a
fraction f of the original MACs) and ``measure(model)`` (its p50 latency in ms on the chosen
provider), and searches the MAC fraction. Latency is roughly affine in MACs,

    L(f) ~ c + b * f          c: fixed per-call overhead (session, small ops), b: compute,

with L(1) = L0 the original's latency. The first guess ignores the overhead, f1 = T' / L0, with
the aim T' = (1 - margin) T a little under the target so measurement noise does not undo a hit.
Each later round fits the line through the two measured points that bracket T' (regula falsi),
or through the two smallest fractions when all are still too slow (secant extrapolation, at most
halving the fraction per round), and
falls back to bisection when the fit is useless (noise made the slope non-positive or the
estimate leaves the bracket). It stops when the bracket [largest f that met T, smallest f that
did not] is narrower than ``tolerance``, after ``max_rounds`` prunes, or at the ends of the
range. The chosen model is the one with the largest fraction that met the target (most MACs
kept = best quality); when none did, the fastest one, reported as not met.

:func:`pick_from_trail` does the same over models already written (e.g. a lagrangian --trail):
it binary-searches them in order of decreasing MACs for the largest one that meets T.
Every measurement is recorded in the curve (mac_fraction, macs, latency_ms, met).

On a shared machine the load changes between rounds, so :func:`search_runs` times every
candidate interleaved with the original (:class:`PairedMeter`): each curve entry also holds the
original's p50 under the same load (``original_ms``), and the line's anchor L(1) is the median of
those rather than one early figure. ``--latency-batch B`` times one call with B rows, for models
so small that the fixed per-call overhead would otherwise be most of what is measured.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import onnx

from onnxprune.measure.latency import measure_latency

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class LatencySearch(Generic[T]):
    target_ms: float
    original_ms: float | None
    curve: list[dict[str, Any]]  # per measured candidate, in measurement order
    candidates: list[T]  # the models behind the curve's entries
    chosen: int | None  # index into curve/candidates

    @property
    def met(self) -> bool:
        return self.chosen is not None and self.curve[self.chosen]["met"]

    @property
    def model(self) -> T | None:
        return None if self.chosen is None else self.candidates[self.chosen]

    def to_dict(self, provider: str | None = None, batch: int = 1) -> dict[str, Any]:
        """The report's ``latency_target`` section (``batch``: rows per timed call)."""
        return {"target_ms": self.target_ms, "provider": provider, "batch": batch, "original_ms": self.original_ms,
                "met": self.met, "chosen": self.chosen, "curve": self.curve}


def prune_to_latency(
    prune_at: Callable[[float], T],
    measure: Callable[[T], float],
    original_latency_ms: float | Callable[[], float],
    target_ms: float,
    max_rounds: int = 5,
    macs_of: Callable[[T], int] | None = None,
    min_fraction: float = 0.02,
    max_fraction: float = 0.95,
    tolerance: float = 0.05,
    margin: float = 0.03,
) -> LatencySearch[T]:
    """Searches the MAC fraction whose pruned model's measured latency meets ``target_ms``.

    ``original_latency_ms`` may be a callable giving the current estimate (e.g. the median of the
    original's timings taken alongside each candidate): the anchor of the line then follows the
    machine's load instead of one early measurement."""
    if target_ms <= 0:
        raise ValueError(f"target latency must be positive, got {target_ms}")
    anchor = original_latency_ms if callable(original_latency_ms) else (lambda: original_latency_ms)
    aim = (1.0 - margin) * target_ms
    search: LatencySearch[T] = LatencySearch(target_ms, anchor(), [], [], None)
    points = [(1.0, anchor())]  # (fraction, latency): the original anchors the line
    fraction = _clamp(aim / points[0][1], min_fraction, max_fraction)
    for round_index in range(max_rounds):
        model = prune_at(fraction)
        latency = float(measure(model))
        met = latency <= target_ms
        search.candidates.append(model)
        search.curve.append({"round": round_index, "mac_fraction": fraction,
                             "macs": None if macs_of is None else int(macs_of(model)),
                             "latency_ms": latency, "met": met})
        log.info("latency target %.4g ms: MAC fraction %.3f -> %.4g ms (%s)", target_ms, fraction, latency,
                 "met" if met else "too slow")
        points.append((fraction, latency))
        points[0] = (1.0, anchor())
        fraction = _next_fraction(points, aim, target_ms, min_fraction, max_fraction, tolerance)
        if fraction is None:
            break
    search.chosen = _choose(search.curve)
    return search


def _next_fraction(points, aim, target, low, high, tolerance) -> float | None:
    """The next fraction to try, or None when the search is done."""
    met = [p for p in points if p[1] <= target]
    slow = [p for p in points if p[1] > target]
    best = max(met, default=None)  # largest fraction that met
    if best is not None:
        if best[0] >= high - 1e-9:
            return None  # the lightest pruning allowed already meets it
        above = [p for p in slow if p[0] > best[0]]
        if not above:  # nothing slower above it: only the top of the range is left to try
            return None if best[0] >= high - 1e-9 else high
        upper = min(above)
        if upper[0] - best[0] <= tolerance:
            return None
        guess = _line(best, upper, aim)
        middle = (best[0] + upper[0]) / 2
        inside = guess is not None and best[0] + tolerance / 2 < guess < upper[0] - tolerance / 2
        return _clamp(guess if inside else middle, low, high)
    # everything measured is too slow: extrapolate down from the two smallest fractions
    smallest = sorted(slow)[:2]
    if smallest[0][0] <= low + 1e-9:
        return None  # even the smallest model allowed is too slow
    guess = _line(smallest[0], smallest[1], aim) if len(smallest) == 2 else None
    if guess is None or guess >= smallest[0][0]:
        guess = smallest[0][0] / 2  # noise or overhead-dominated: halve
    # at most halve per round: one noisy pair of points must not send the search to the smallest
    # model (seen on resnet18 under load: 0.70 -> 0.02, a wasted training run)
    return _clamp(max(guess, smallest[0][0] / 2), low, high)


def _line(a: tuple[float, float], b: tuple[float, float], aim: float) -> float | None:
    """The fraction where the line through a and b reaches ``aim``; None unless latency rises with MACs."""
    (fa, la), (fb, lb) = a, b
    if fa == fb or (lb - la) / (fb - fa) <= 0:
        return None
    return fa + (aim - la) * (fb - fa) / (lb - la)


def _choose(curve: Sequence[Mapping[str, Any]]) -> int | None:
    if not curve:
        return None
    met = [i for i, c in enumerate(curve) if c["met"]]
    if met:
        return max(met, key=lambda i: curve[i]["mac_fraction"])
    return min(range(len(curve)), key=lambda i: curve[i]["latency_ms"])


def _clamp(value: float, low: float, high: float) -> float:
    # 4 decimals: the fraction is passed on as text (--target-macs 0.4321) and recorded as tried
    return round(min(max(value, low), high), 4)


def pick_from_trail(
    candidates: Sequence[tuple[float, T]],
    measure: Callable[[T], float],
    target_ms: float,
    macs_of: Callable[[T], int] | None = None,
    original_latency_ms: float | None = None,
) -> LatencySearch[T]:
    """The largest of ``candidates`` ((mac_fraction, model) pairs) whose measured latency meets
    ``target_ms``, found by binary search over the fractions (latency grows with MACs), so
    about log2(n) models are timed."""
    if not candidates:
        raise ValueError("no trail models to pick from")
    ordered = sorted(candidates, key=lambda c: -c[0])  # largest first
    search: LatencySearch[T] = LatencySearch(target_ms, original_latency_ms, [], [], None)
    lo, hi = 0, len(ordered) - 1  # invariant: the answer, if any, lies in [lo, hi]
    while lo <= hi:
        mid = (lo + hi) // 2
        fraction, model = ordered[mid]
        latency = float(measure(model))
        met = latency <= target_ms
        search.candidates.append(model)
        search.curve.append({"round": len(search.curve), "mac_fraction": fraction,
                             "macs": None if macs_of is None else int(macs_of(model)),
                             "latency_ms": latency, "met": met})
        if met:
            hi = mid - 1  # a larger model might meet it too
        else:
            lo = mid + 1
    search.chosen = _choose(search.curve)
    return search


_TRAIL_FILE = re.compile(r"macs_(\d{3})\.onnx")


def trail_candidates(folder: str | os.PathLike) -> list[tuple[float, Path]]:
    """(mac_fraction, path) of a lagrangian --trail folder's ``macs_<pct>.onnx`` models."""
    found = []
    for path in sorted(Path(folder).glob("macs_*.onnx")):
        match = _TRAIL_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)) / 100.0, path))
    return found


def latency_meter(feeds: Mapping[str, Any], provider: str = "cpu", threads: int | None = 1,
                  seconds: float = 1.0, min_runs: int = 20,
                  batch: int = 1) -> Callable[[onnx.ModelProto | str | os.PathLike], float]:
    """``measure(model) -> p50 ms`` of one call with ``batch`` rows on ``provider`` via onnxruntime.latency."""
    def measure(model: onnx.ModelProto | str | os.PathLike) -> float:
        (stats,) = measure_latency([model], feeds, provider=provider, threads=threads, batch=batch,
                                   seconds=seconds, min_runs=min_runs)
        return stats.p50_ms

    return measure


class PairedMeter:
    """``measure(model) -> p50 ms`` that times the original in the same interleaved session, so
    each candidate's figure comes with the original's under the same load (``originals``)."""

    def __init__(self, original: onnx.ModelProto | str | os.PathLike, feeds: Mapping[str, Any], provider: str = "cpu",
                 threads: int | None = 1, seconds: float = 1.0, min_runs: int = 20, batch: int = 1) -> None:
        self.original, self.feeds, self.provider, self.threads = original, feeds, provider, threads
        self.seconds, self.min_runs, self.batch = seconds, min_runs, batch
        self.originals: list[float] = []  # the original's p50, one per call

    def __call__(self, model: onnx.ModelProto | str | os.PathLike) -> float:
        before, after = measure_latency([self.original, model], self.feeds, provider=self.provider,
                                        threads=self.threads, batch=self.batch, seconds=self.seconds,
                                        min_runs=self.min_runs, names=["original", "candidate"])
        self.originals.append(before.p50_ms)
        return after.p50_ms

    def original_ms(self) -> float:
        """The median of the original's timings so far (the first one alone before any candidate)."""
        if not self.originals:
            (stats,) = measure_latency(
                [self.original], self.feeds, provider=self.provider, threads=self.threads, batch=self.batch,
                seconds=self.seconds, min_runs=self.min_runs)
            self.originals.append(stats.p50_ms)
        return statistics.median(self.originals)


def search_runs(
    run: Callable[[dict[str, Any]], Any],
    method_options: Mapping[str, Any],
    original: onnx.ModelProto,
    feeds: Mapping[str, Any],
    target_ms: float,
    provider: str = "cpu",
    threads: int | None = 1,
    seconds: float = 1.0,
    max_rounds: int = 4,
    batch: int = 1,
) -> tuple[Any, LatencySearch]:
    """--target-latency-ms over whole prune runs: ``run(method_options)`` is one run of a
    structured method (a pipeline RunResult: ``.model``, ``.report``), called with
    ``target_macs`` set to each fraction the search tries. Returns the chosen run, its report
    holding ``latency_target`` (the measured curve), and the search. Latency is that of one call
    with ``batch`` rows (the feeds' rows repeated), so the target can sit well above the fixed
    per-call overhead of small models."""
    meter = PairedMeter(original, feeds, provider, threads, seconds, batch=batch)
    search = prune_to_latency(lambda f: run({**method_options, "target_macs": f"{f:.4f}"}),
                              lambda result: meter(result.model), meter.original_ms, target_ms, max_rounds,
                              macs_of=lambda result: result.report["macs"]["after"])
    # the original as timed alongside each candidate (the first entry is the lone first timing)
    for entry, original_ms in zip(search.curve, meter.originals[1:]):
        entry["original_ms"] = original_ms
    search.original_ms = meter.original_ms()
    chosen = search.model
    chosen.report["latency_target"] = search.to_dict(provider, batch)
    if not search.met:
        log.warning("--target-latency-ms %.4g: not met in %d rounds; keeping the fastest model (%.4g ms)",
                    target_ms, len(search.curve), search.curve[search.chosen]["latency_ms"])
    return chosen, search


def run_from_table(
    run: Callable[[dict[str, Any]], Any],
    method_options: Mapping[str, Any],
    table_ms: float,
    original: onnx.ModelProto,
    feeds: Mapping[str, Any],
    target_ms: float,
    provider: str = "cpu",
    threads: int | None = 1,
    seconds: float = 1.0,
    batch: int = 1,
) -> Any:
    """--target-latency-ms with a --latency-table: one run. The method's budget is then the
    table's predicted latency, so the target T is the fraction T / table_ms of the predicted
    full-width latency (``table_ms``: the table's whole-model p50); the chosen model is measured
    once, alongside the original, and recorded as a one-entry curve."""
    fraction = min(1.0, target_ms / table_ms)
    result = run({**method_options, "target_macs": f"{fraction:.4f}"})
    if not result.replica.is_main:
        return result
    meter = PairedMeter(original, feeds, provider, threads, seconds, batch=batch)
    measured = meter(result.model)
    entry = {"round": 0, "mac_fraction": fraction, "macs": result.report["macs"]["after"],
             "latency_ms": measured, "met": measured <= target_ms, "original_ms": meter.originals[0],
             "predicted_ms": fraction * table_ms}
    search = LatencySearch(target_ms=target_ms, curve=[entry], candidates=[result], chosen=0,
                           original_ms=meter.originals[0])
    result.report["latency_target"] = {**search.to_dict(provider, batch), "via": "latency table"}
    if not entry["met"]:
        log.warning("--target-latency-ms %.4g with the latency table: measured %.4g ms (predicted %.4g ms)",
                    target_ms, measured, entry["predicted_ms"])
    return result
