"""PNG plots for run reports, drawn headless (matplotlib's Agg canvas, no pyplot state).

- :func:`plot_layer_widths`: per-layer width (channels or units kept) before and after pruning,
  as paired bars; the kept fraction after/before is written above each pair.
- :func:`plot_trail`: fidelity and accuracy against MACs or sparsity along a method's trail
  (the models it passes through while tapering its budget), one line per metric.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

from onnxprune.errors import OnnxPruneError

_METRICS = ("fidelity", "accuracy")
_X_LABELS = {"macs": "MACs per sample", "sparsity": "sparsity (fraction of weights removed)"}


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_layer_widths(
    before: Mapping[str, int], after: Mapping[str, int], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Bar chart of each layer's width before and after; a layer missing from ``after`` was
    removed (width 0). Layers keep the order of ``before``. Returns the PNG path."""
    if not before:
        raise OnnxPruneError("plot_layer_widths: no layers to plot")
    unknown = [name for name in after if name not in before]
    if unknown:
        raise OnnxPruneError(f"plot_layer_widths: layers {unknown[:3]} are in 'after' but not 'before'")
    names = list(before)
    old = [before[n] for n in names]
    new = [after.get(n, 0) for n in names]
    many = len(names) > 24
    # one inch per ~4 layers keeps the labels readable; horizontal bars for long models
    length = max(6.0, min(0.28 * len(names) + 2, 60.0))
    fig = Figure(figsize=(10, length) if many else (length, 5), layout="constrained")
    ax = fig.add_subplot()
    positions = range(len(names))
    bar = ax.barh if many else ax.bar
    offset = 0.2
    size_kw = "height" if many else "width"
    bar([p - offset for p in positions], old, **{size_kw: 0.4}, label="before", color="#9ecae1")
    bar([p + offset for p in positions], new, **{size_kw: 0.4}, label="after", color="#08519c")
    for p, o, n in zip(positions, old, new):
        text = f"{n / o:.0%}" if o else ""
        if many:
            ax.annotate(text, (max(o, n), p), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=7)
        else:
            ax.annotate(text, (p, max(o, n)), xytext=(0, 3), textcoords="offset points", ha="center",
                        fontsize=7)
    if many:
        ax.set_yticks(list(positions), names, fontsize=7)
        ax.invert_yaxis()  # first layer on top
        ax.set_xlabel("width (channels / units)")
    else:
        slanted = len(names) > 6
        ax.set_xticks(list(positions), names, rotation=45 if slanted else 0, ha="right" if slanted else "center",
                      fontsize=8)
        ax.set_ylabel("width (channels / units)")
    kept = sum(new) / max(sum(old), 1)
    ax.set_title(title or f"layer widths: {sum(new)} of {sum(old)} kept ({kept:.0%})")
    ax.legend()
    return _save(fig, path)


def plot_trail(
    points: Sequence[Mapping[str, float | None]],
    x_key: str,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Fidelity and accuracy (fractions in [0, 1]) against ``x_key`` ("macs" or "sparsity", or
    any key the points share), one marker per point in trail order. Metrics missing or None in
    every point are left out. Returns the PNG path."""
    if not points:
        raise OnnxPruneError("plot_trail: no points to plot")
    missing = [i for i, p in enumerate(points) if p.get(x_key) is None]
    if missing:
        raise OnnxPruneError(f"plot_trail: points {missing[:5]} have no {x_key!r}")
    metrics = [m for m in _METRICS if any(p.get(m) is not None for p in points)]
    if not metrics:
        raise OnnxPruneError(f"plot_trail: no point has any of {', '.join(_METRICS)}")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for metric, marker in zip(metrics, "os"):
        pairs = [(p[x_key], p[metric]) for p in points if p.get(metric) is not None and not _nan(p[metric])]
        ax.plot([x for x, _ in pairs], [y for _, y in pairs], marker=marker, label=metric)
    ax.set_xlabel(_X_LABELS.get(x_key, x_key))
    ax.set_ylabel("on the holdout")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if x_key == "macs":
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.invert_xaxis()  # a trail runs from the full model to the smallest
    elif x_key == "sparsity":
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"trail: {len(points)} points")
    return _save(fig, path)


def _nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def plot_latency_curve(curve: Sequence[Mapping[str, Any]], target_ms: float, path: str | os.PathLike,
                       original_ms: float | None = None, original_macs: int | None = None, batch: int = 1) -> Path:
    """Measured latency against MACs (or the MAC fraction when MACs are unknown), the target as a
    dashed line; candidates that met it filled, the others hollow, the original (when given) as
    a black square at the right end of the line."""
    use_macs = all(c.get("macs") is not None for c in curve)
    x_key = "macs" if use_macs else "mac_fraction"
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    line = [(c[x_key], c["latency_ms"]) for c in curve]
    if original_ms is not None and (original_macs is not None or not use_macs):
        anchor = original_macs if use_macs else 1.0
        line.append((anchor, original_ms))
        ax.scatter([anchor], [original_ms], marker="s", color="black", zorder=3, label=f"original {original_ms:.3g} ms")
    line.sort()
    ax.plot([x for x, _ in line], [y for _, y in line], color="#08519c", alpha=0.5)
    for met, style in ((True, {"color": "#2ca02c", "label": "meets target"}),
                       (False, {"facecolors": "none", "edgecolors": "#d62728", "label": "too slow"})):
        pts = [c for c in curve if c["met"] == met]
        if pts:
            ax.scatter([c[x_key] for c in pts], [c["latency_ms"] for c in pts], zorder=3, **style)
    for c in curve:
        ax.annotate(str(c.get("round", "")), (c[x_key], c["latency_ms"]), xytext=(4, 4), textcoords="offset points",
                    fontsize=7)
    ax.axhline(target_ms, linestyle="--", color="gray", label=f"target {target_ms:.3g} ms")
    ax.set_xlabel("MACs per sample" if use_macs else "fraction of the original MACs")
    if use_macs:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel(f"latency p50 (ms per call, batch {batch})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"latency search: {len(curve)} models measured")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path
