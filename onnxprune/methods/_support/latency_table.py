"""A measured latency table as the structured methods' resource (``--latency-table``, issue 19 item 3).

``onnxprune profile`` (:mod:`onnxprune.measure.profile`) timed every prunable layer t alone over
two sweeps at one provider and batch: ``L_out,t(k)`` with k of its C_out outputs kept (all inputs)
and ``L_in,t(k)`` with k of its C_in inputs kept (all outputs), both ending at the full-width
``L_t``. With the soft kept fractions ``f_in(t)``, ``f_out(t)`` that :class:`resource.Resource`
already computes from the gates (linear in them), the predicted latency is

    R(g, b) = C( sum_t lat_t(f_in(t), f_out(t)) * prod_{B contains t} b_B )
    lat_t(f_in, f_out) = L_t * P_out,t(f_out) / P_out,t(1) * P_in,t(f_in) / P_in,t(1)   (separable)

(each sweep's own full-width point P(1); ``L_t`` their mean; a table whose sweeps share the full
width reads ``P_out * P_in / L_t``)

where ``P`` is the piecewise-linear interpolation of a sweep in the kept fraction k / C through
its multiples of :data:`ALIGN` and its full width only (``curve_points``: the width rounding keeps
nothing else, and a count off the multiple runs another onnxruntime kernel whose cost says nothing
about its neighbours; interpolating through such points read pruned mobilenets' layers up to 2x
too slow), the sweep made non-decreasing first by a suffix minimum, m(k) = min over k' >= k of
L(k') (noise, or a multiple of 8 slower than a larger one, must not reward keeping *more* channels
in the gradient, and the width rounding below moves a count to the no-slower larger one, which is
what m(k) assumes), extended below the smallest measured width along its first segment and
clipped at 0. A depthwise layer has only ``P_out`` (its inputs are its
outputs). The sum is mapped onto the whole model by the profile's calibration C (piecewise-linear
through the whole model timed at full width and uniformly pruned, :mod:`onnxprune.measure.profile`);
an uncalibrated table adds the remainder (the whole model's p50 minus the layers' full-width sum). A MAC-bearing node the table does not list costs its MACs times the median ms per MAC
of the listed layers (a warning names how many).

R is piecewise-linear in each fraction, so ``dR/dg`` is defined everywhere except at the grid
points (torch takes one side). For Bernoulli gates R(theta) is no longer the exact expectation
(lat is not multilinear); it is the cost at the mean.

Width rounding (:meth:`LatencyResource.round_widths`): within ``band`` channels of each group's
kept count k, among the multiples of :data:`ALIGN` (and the whole group), the *raw* measured
curves (not made monotone) are read, and the group keeps the largest count whose predicted
latency is no more than at the largest multiple <= k: a multiple that costs nothing more than a
smaller one is kept (the table says where onnxruntime's blocking makes channels free). This
replaces rounding to the nearest multiple when a table is given.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.methods._support.resource import Resource, Term

log = logging.getLogger(__name__)


def suffix_min(y: Sequence[float]) -> np.ndarray:
    """``m_i = min_{j >= i} y_j``: the latency of i channels is taken as no more than that of any
    larger count (which the width rounding can always choose instead); the full width keeps its
    measured value, and the curve becomes non-decreasing."""
    return np.minimum.accumulate(np.asarray(y, dtype=np.float64)[::-1])[::-1].copy()


class Curve:
    """Piecewise-linear latency of one sweep in the kept fraction x = k / C (torch, differentiable)."""

    def __init__(self, kept: Sequence[int], ms: Sequence[float], full: int, monotone: bool = True) -> None:
        order = np.argsort(kept)
        x = np.asarray(kept, dtype=np.float64)[order] / full
        y = np.asarray(ms, dtype=np.float64)[order]
        if monotone:
            y = suffix_min(y)
        if x[0] > 0:  # extend the first segment down to 0 channels (clipped at 0 below)
            slope = (y[1] - y[0]) / (x[1] - x[0]) if len(x) > 1 else y[0] / x[0]
            x, y = np.concatenate([[0.0], x]), np.concatenate([[max(y[0] - slope * x[0], 0.0)], y])
        self.x, self.y = torch.tensor(x), torch.tensor(y)
        self.full = full

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        f = f.clamp(0.0, 1.0)
        i = torch.searchsorted(self.x, f.detach(), right=True).clamp(1, len(self.x) - 1)
        x0, x1, y0, y1 = self.x[i - 1], self.x[i], self.y[i - 1], self.y[i]
        return y0 + (y1 - y0) * (f - x0) / (x1 - x0)


class LatencyTable:
    """One profile (provider, batch) of a table written by ``onnxprune profile``."""

    def __init__(self, path: str | Path, provider: str | None = None, batch: int | None = None) -> None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise OnnxPruneError(f"--latency-table {path}: cannot read ({exc})") from None
        if not isinstance(data, dict) or not str(data.get("format", "")).startswith("onnxprune-latency-table/"):
            raise OnnxPruneError(f"--latency-table {path}: not a table written by `onnxprune profile`")
        profiles = [p for p in data["profiles"] if (provider is None or p["provider"] == provider)
                    and (batch is None or p["batch"] == batch)]
        if not profiles:
            have = ", ".join(f"{p['provider']} batch {p['batch']}" for p in data["profiles"])
            raise OnnxPruneError(f"--latency-table {path}: no profile for provider {provider} batch {batch} "
                                 f"(it has {have})")
        self.path, self.data, self.profile = str(path), data, profiles[0]
        self.remainder = float(self.profile["remainder_ms"])
        # the whole model from the sum of the layers: calibrated on uniformly pruned copies of the
        # model when the profile could (onnxprune.measure.profile), else + the constant remainder
        calibration = self.profile.get("calibration") or {}
        points = sorted((p["layers_sum_ms"], p["model_ms"]) for p in calibration.get("points", []))
        self.calibration = None
        if "scale" in calibration and len(points) >= 2:
            x = torch.tensor([p[0] for p in points], dtype=torch.float64)
            y = torch.tensor(suffix_min([p[1] for p in points]), dtype=torch.float64)
            self.calibration = (x, y)
        self.model_ms = float(self.profile["model_p50_ms"])
        self.layers = {}
        for entry in self.profile["layers"]:
            self.layers[entry["node"]] = entry
            self.layers.setdefault(entry["output"], entry)

    def model_latency(self, layers: torch.Tensor) -> torch.Tensor:
        """The whole model's latency for a sum of the layers' table latencies: piecewise-linear
        through the calibration points (extended along the end segments), else + the remainder."""
        if self.calibration is None:
            return self.remainder + layers
        x, y = self.calibration
        i = torch.searchsorted(x, layers.detach().reshape(1), right=True).clamp(1, len(x) - 1)[0]
        return y[i - 1] + (y[i] - y[i - 1]) * (layers - x[i - 1]) / (x[i] - x[i - 1])

    def describe(self) -> str:
        p = self.profile
        return f"{p['provider']} batch {p['batch']} on {p['device']}, {self.data['threads']} thread(s)"


class _LayerModel:
    def __init__(self, entry: dict, monotone: bool) -> None:
        from onnxprune.measure.profile import curve_points

        sweeps = entry["sweeps"]
        self.full_ms = float(entry["full_p50_ms"])
        out = curve_points(sweeps["out"], entry["full_out"])
        self.out = Curve([p["kept"] for p in out], [p["p50_ms"] for p in out], entry["full_out"], monotone) \
            if len(out) > 1 else None
        inn = curve_points(sweeps.get("in", []), entry["full_in"])
        self.inn = Curve([p["kept"] for p in inn], [p["p50_ms"] for p in inn], entry["full_in"], monotone) \
            if len(inn) > 1 else None

    def __call__(self, f_in: torch.Tensor, f_out: torch.Tensor) -> torch.Tensor:
        # L_t * P_out(f_out) / P_out(1) * P_in(f_in) / P_in(1): each sweep read as ratios to its
        # own full-width point (the profile times the full width once in each sweep)
        lat = self.full_ms * (self.out(f_out) / self.out.y[-1] if self.out is not None else f_out)
        if self.inn is not None:
            lat = lat * self.inn(f_in) / self.inn.y[-1]
        elif not isinstance(f_in, float):
            lat = lat * f_in  # not swept on the input side: proportional
        return lat


# Width rounding keeps counts at multiples of ALIGN. The one-node models cannot see a whole-graph
# effect of onnxruntime's CPU provider: its NCHWc layout is kept between convs only when their
# channel counts are multiples of the block, so one odd width turns reorders on around it. On the
# digits mobilenet, rounding to any count the table called no slower kept 15, 19 and 58 channels:
# predicted 0.74 of the original's latency, measured 1.09 (thread CPU time, batch 64).
ALIGN = 8


class LatencyResource(Resource):
    """:class:`Resource` whose "macs" are the table's predicted latency in ms (params unchanged)."""

    def __init__(self, terms: Sequence[Term], nodes: Sequence[str | tuple[str, ...]], groups: Mapping[str, int],
                 branches: Sequence[str], table: LatencyTable) -> None:
        super().__init__(terms, groups, branches)
        self.table = table
        # a term's node by its name, else (an unnamed node: the analysis names it) by its output
        matched = [next((table.layers[k] for k in ([n] if isinstance(n, str) else n) if k in table.layers), None)
                   for n in nodes]
        known = [(e, t) for e, t in zip(matched, terms) if e is not None and t.macs > 0]
        rate = float(np.median([e["full_p50_ms"] / t.macs for e, t in known])) if known else 0.0
        self.unmatched = [n if isinstance(n, str) else n[0] for n, e in zip(nodes, matched) if e is None]
        if self.unmatched:
            log.warning("latency table %s lists %d of %d MAC-bearing nodes; the others (%s) cost their MACs at "
                        "%.3g ms per GMAC", table.path, len(terms) - len(self.unmatched), len(terms),
                        ", ".join(self.unmatched[:5]), rate * 1e9)
        self.depthwise = [t.depthwise for t in terms]
        self.raw = [_LayerModel(e, False) if e else None for e in matched]
        self.mono = [_LayerModel(e, True) if e else None for e in matched]
        self.fallback = torch.tensor([0.0 if e else t.macs * rate for e, t in zip(matched, terms)], dtype=torch.float64)
        self.total_macs = float(self.latency(self._gvec({}), self._keep(None)))
        self.total_ms = self.total_macs

    def latency(self, gvec: torch.Tensor, keep: torch.Tensor, raw: bool = False) -> torch.Tensor:
        f_in, f_out = self.ins(gvec), self.outs(gvec)
        branch = keep[self.brs].prod(dim=1)
        models = self.raw if raw else self.mono
        parts = []
        for t, model in enumerate(models):
            if model is None:
                parts.append(self.fallback[t] * f_in[t] * f_out[t])
            else:
                parts.append(model(1.0 if self.depthwise[t] else f_in[t], f_out[t]))
        return self.table.model_latency((torch.stack(parts) * branch).sum())

    def __call__(self, gates, branch_keep=None, *, weights: str = "macs", raw: bool = False) -> torch.Tensor:
        if weights != "macs":
            return super().__call__(gates, branch_keep, weights=weights)
        return self.latency(self._gvec(gates), self._keep(branch_keep), raw)

    def hard(self, masks, dropped_branches=(), *, weights: str = "macs", raw: bool = False) -> float:
        keep = {b: torch.tensor(0.0) for b in dropped_branches}
        with torch.no_grad():
            return float(self({k: v.float() for k, v in masks.items()}, keep, weights=weights, raw=raw))

    def round_widths(self, scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], band: int,
                     allowed: Mapping[str, torch.Tensor] | None = None,
                     dropped_branches: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """Per group, the largest kept count within ``band`` of its count that the raw table says
        is no slower (module docstring); groups in turn, each seeing the others' new counts."""
        out = {gid: m.clone() for gid, m in masks.items()}
        for gid, mask in masks.items():
            size, k = len(mask), int(mask.sum())
            s = scores[gid].detach().to(torch.float64).cpu().clone()
            limit = size
            if allowed is not None:
                s[~allowed[gid].cpu()] = -math.inf
                limit = int(allowed[gid].sum())
            order = torch.argsort(s, descending=True, stable=True)

            def top(n: int) -> torch.Tensor:
                new = torch.zeros(size, dtype=torch.bool)
                new[order[:n]] = True
                return new

            # candidates: multiples of ALIGN (and the whole group) within the band
            cands = [n for n in range(max(1, k - band), min(limit, k + band) + 1) if n % ALIGN == 0 or n == size]
            if size <= ALIGN or not cands:
                out[gid] = mask.clone()
                continue
            below = [n for n in cands if n <= k] or cands[:1]
            base = self.hard({**out, gid: top(below[-1])}, dropped_branches, raw=True)
            best = below[-1]
            for n in sorted(cands, reverse=True):
                if n >= best and self.hard({**out, gid: top(n)}, dropped_branches, raw=True) <= base * (1 + 1e-9):
                    best = n
                    break
            out[gid] = top(best) if best != k else mask.clone()
        return out


def latency_resource(structure, ctx, path: str, provider: str | None = None, batch: int | None = None):
    """The table's :class:`LatencyResource` over ``structure``'s groups and branches (same terms
    as its MAC resource, from ``ctx.analysis``)."""
    from onnxprune.methods._support.resource import terms_from_analysis

    table = LatencyTable(path, provider, batch)
    terms = terms_from_analysis(ctx.analysis, ctx.imported.onnx_model, structure.branches)
    from onnxprune.passes.analysis import unique_node_names

    graph_nodes = list(ctx.imported.onnx_model.graph.node)
    output_of = dict(zip(unique_node_names((n.name, n.op_type) for n in graph_nodes),
                         (n.output[0] for n in graph_nodes)))
    nodes = [(t.node, output_of.get(t.node, t.node)) for t in ctx.analysis.mac_terms]
    resource = LatencyResource(terms, nodes, structure.groups, list(structure.branches), table)
    log.info("latency table %s (%s): predicted %.4g ms at full width", path, table.describe(), resource.total_ms)
    return resource


def layer_widths(model) -> dict[str, tuple[int, int]]:
    """Node name (and output name) -> (kept inputs, kept outputs) of every Conv, Gemm and MatMul
    with a constant weight in an ONNX model (a pruned one: its weights' shapes say what is kept)."""
    from onnxprune.measure.profile import _widths

    return _widths(model)


def predict_model_latency(table: LatencyTable, model, monotone: bool = True) -> float:
    """The table's latency (ms) of an ONNX model pruned from the profiled one: each listed layer
    at the widths its weight now has (0 when the pruning removed it), plus the remainder."""
    widths = layer_widths(model)
    total = 0.0
    for entry in table.profile["layers"]:
        name = entry["node"] if entry["node"] in widths else entry["output"]
        if name not in widths:
            continue  # removed with its residual branch
        k_in, k_out = widths[name]
        lat = _LayerModel(entry, monotone)
        f_in = 1.0 if entry["depthwise"] else torch.tensor(k_in / entry["full_in"], dtype=torch.float64)
        total += float(lat(f_in, torch.tensor(k_out / entry["full_out"], dtype=torch.float64)))
    return float(table.model_latency(torch.tensor(total, dtype=torch.float64)))
