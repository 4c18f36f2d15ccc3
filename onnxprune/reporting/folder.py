"""``--report DIR``: the run report as a folder a person (or a CI artifact page) can read.

    DIR/report.json   every figure (the run report of onnxprune.reporting.run_report, plus the sections below)
    DIR/report.md     a readable summary with the plots inlined
    DIR/widths.png    per-layer width before / after          (when ``layer_widths`` is present)
    DIR/taper.png     holdout fidelity / accuracy vs MACs or sparsity, epoch by epoch
    DIR/trail.png     the same along the method's --trail models (when ``trail`` is present)
    DIR/latency.png   measured latency vs MACs of --target-latency-ms (when present)

``--report run.json`` (a path ending in ``.json``) writes only the JSON file, as before.

Sections this module adds to the report (:func:`add_model_figures`, :func:`read_trail`):

- ``layer_widths``: per Conv/ConvTranspose/Gemm/MatMul weight (graph order of the model before
  pruning): ``name`` (the weight initializer), ``node``, ``op_type``, ``before``, ``after``
  (0 = the layer was removed). A layer's width is its output channels (Conv: W[0]; ConvTranspose:
  W[1]*group) or output units (Gemm: B[0] with transB else B[1]; MatMul x@W: W[-1]).
- ``size_bytes``: ``{before, after}`` serialized model size (weights inlined).
- ``trail``: rows of the method's trail table (``macs``, ``top1_agreement``, ``accuracy``, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.macs import PRUNABLE_OPS as WIDTH_OPS
from onnxprune.graph.macs import format_count
from onnxprune.graph.modelio import serialized_size
from onnxprune.reporting import run_report as run_report
from onnxprune.reporting.plots import plot_latency_curve, plot_layer_widths, plot_trail
from onnxprune.reporting.toml import to_toml
from onnxprune.run.outputs import fault_point

log = logging.getLogger(__name__)


def layer_widths(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Weight initializer name -> {node, op_type, width} for every layer whose weight is an
    initializer, in graph order (activation x activation MatMuls have no width)."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    out: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type not in WIDTH_OPS or len(node.input) < 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight, width = node.input[1], None
        shape = shapes.get(weight)
        if node.op_type == "Conv" and shape:
            width = shape[0]
        elif node.op_type == "ConvTranspose" and shape:
            width = shape[1] * attrs.get("group", 1)
        elif node.op_type == "Gemm" and shape:
            width = shape[0] if attrs.get("transB", 0) else shape[1]
        elif node.op_type == "MatMul":
            if shape and len(shape) >= 2:
                width = shape[-1]
            elif node.input[0] in shapes and len(shapes[node.input[0]]) >= 2:  # W @ x: rows of W
                weight = node.input[0]
                width = shapes[weight][-2]
        if width is not None and weight not in out:
            out[weight] = {"node": node.name, "op_type": node.op_type, "width": int(width)}
    return out


def widths_table(before: onnx.ModelProto, after: onnx.ModelProto) -> list[dict[str, Any]]:
    """Per layer of ``before``: name, node, op_type, before and after width (0 if removed)."""
    old, new = layer_widths(before), layer_widths(after)
    return [{"name": name, "node": info["node"], "op_type": info["op_type"], "before": info["width"],
             "after": new.get(name, {}).get("width", 0)} for name, info in old.items()]


def add_model_figures(report: dict[str, Any], before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Adds ``layer_widths`` and ``size_bytes`` computed from the two models. ``before`` should
    be the normalized original (``RunResult.imported.onnx_model``), whose initializer names the
    pruned model keeps."""
    report["layer_widths"] = widths_table(before, after)
    # serialized sizes counted without encoding the weights (ByteSize fails at 2 GiB)
    report["size_bytes"] = {"before": serialized_size(before), "after": serialized_size(after)}


def read_trail(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a --trail folder's ``trail.md`` table (numbers parsed); [] if there is none."""
    table = Path(folder) / "trail.md"
    if not table.is_file():
        return []
    lines = [line.strip() for line in table.read_text().splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return []
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
    keys = cells(lines[0])
    return [{k: _number(v) for k, v in zip(keys, cells(line))} for line in lines[2:]]


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def taper_points(report: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """(points, x_key) of holdout fidelity / accuracy per epoch against MACs (structured
    methods log ``macs_frac``) or sparsity (weight-level methods), starting at the original
    and ending at the written model; None when the history has neither."""
    history = report.get("history") or []
    macs_before = (report.get("macs") or {}).get("before")
    if any("macs_frac" in h for h in history) and macs_before:
        x_key, x_of = "macs", lambda h: h["macs_frac"] * macs_before
        first, last = macs_before, (report.get("macs") or {}).get("after")
    elif any("sparsity" in h for h in history):
        x_key, x_of = "sparsity", lambda h: h["sparsity"]
        first, last = 0.0, _written_sparsity(report)
    else:
        return None
    original, pruned = report.get("original") or {}, report.get("pruned") or {}
    points = [_point(x_key, first, original, "original")]
    points += [_point(x_key, x_of(h), h, f"epoch {h.get('epoch')}") for h in history if _has_x(h, x_key)]
    if last is not None:
        points.append(_point(x_key, last, pruned, "written"))
    return points, x_key


def _has_x(entry: Mapping[str, Any], x_key: str) -> bool:
    return ("macs_frac" if x_key == "macs" else "sparsity") in entry


def _written_sparsity(report: Mapping[str, Any]) -> float | None:
    weights = report.get("prunable_weights") or {}
    before, after = weights.get("before"), weights.get("after")
    if not before or not after or not before.get("total"):
        return None
    return 1.0 - after["nonzero"] / before["total"]


def _point(x_key: str, x: float, metrics: Mapping[str, Any], label: str) -> dict[str, Any]:
    return {x_key: x, "fidelity": metrics.get("top1_agreement"), "accuracy": metrics.get("accuracy"), "label": label}


def write_report_files(report: dict[str, Any], path: str | os.PathLike) -> list[Path]:
    """Writes the report to ``path``: a ``.json`` file alone, or a folder (created) with
    report.json, report.md and the plots the report has data for. Returns the written files."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        run_report.write_report_json(report, path)
        return [path]
    if path.exists() and not path.is_dir():
        raise OnnxPruneError(f"--report {path}: exists and is not a directory (use a .json name for one file)")
    path.mkdir(parents=True, exist_ok=True)
    plots = _plots(report, path)
    run_report.write_report_json(report, path / "report.json")
    fault_point("writing-report")
    (path / "report.md").write_text(render_markdown(report, [p.name for p in plots]))
    return [path / "report.json", path / "report.md", *plots]


def _plots(report: Mapping[str, Any], folder: Path) -> list[Path]:
    written = []
    widths = report.get("layer_widths")
    if widths:
        label = {w["name"]: _short(w["name"]) for w in widths}
        if len(set(label.values())) < len(label):
            label = {name: name for name in label}
        written.append(plot_layer_widths({label[w["name"]]: w["before"] for w in widths},
                                         {label[w["name"]]: w["after"] for w in widths}, folder / "widths.png"))
    taper = taper_points(report)
    if taper and any(p["fidelity"] is not None or p["accuracy"] is not None for p in taper[0]):
        written.append(plot_trail(taper[0], taper[1], folder / "taper.png",
                                  title=f"{report.get('method')}: holdout metrics epoch by epoch"))
    trail = [{**row, "fidelity": row.get("top1_agreement")} for row in report.get("trail") or [] if "macs" in row]
    if trail and any(p["fidelity"] is not None or p.get("accuracy") is not None for p in trail):
        written.append(plot_trail(trail, "macs", folder / "trail.png",
                                  title=f"{report.get('method')} trail: {len(trail)} models (not fine-tuned)"))
    curve = (report.get("latency_target") or {}).get("curve")
    if curve:
        target = report["latency_target"]
        written.append(plot_latency_curve(curve, target["target_ms"], folder / "latency.png", target.get("original_ms"),
                                          (report.get("macs") or {}).get("before"), target.get("batch", 1)))
    return written


# --- report.md ----------------------------------------------------------------------------------

def _short(name: str) -> str:
    """Axis label: a torch-exported weight name without its ``.weight`` suffix."""
    return name.removesuffix(".weight")


def render_markdown(report: Mapping[str, Any], images: Sequence[str] = ()) -> str:
    """The readable summary (report.md); ``images`` are PNG names in the same folder."""
    images = set(images)
    written = report.get("output") or report.get("rejected_output")
    title = f"{Path(str(report.get('input'))).name} -> {Path(written).name if written else '(not written)'}"
    out = [f"# onnxprune report: {title}", ""]
    out += _status(report)
    out += ["## Size and speed", "", "| | before | after | after / before |", "| --- | ---: | ---: | ---: |"]
    for label, key in (("MACs per sample", "macs"), ("parameters", "params"), ("model size", "size_bytes")):
        pair = report.get(key)
        if pair:
            fmt = _bytes if key == "size_bytes" else format_count
            out.append(f"| {label} | {fmt(pair['before'])} | {fmt(pair['after'])} | {_ratio(pair['after'], pair['before'])} |")
    weights = report.get("prunable_weights")
    if weights:
        b, a = weights["before"], weights["after"]
        out.append(f"| nonzero prunable weights | {format_count(b['nonzero'])} | {format_count(a['nonzero'])} | "
                   f"{_ratio(a['nonzero'], b['nonzero'])} |")
    latency = report.get("latency")
    if latency:
        b, a = latency["before"], latency["after"]
        out.append(f"| latency p50 ({latency['provider']}, batch {latency['batch']}, {latency['threads']} thread"
                   f"{'s' if latency['threads'] != 1 else ''}) | {b['p50_ms']:.4g} ms | {a['p50_ms']:.4g} ms | "
                   f"{_ratio(a['p50_ms'], b['p50_ms'])} (speedup {latency['speedup']:.2f}x) |")
        out.append(f"| latency p90 | {b['p90_ms']:.4g} ms | {a['p90_ms']:.4g} ms | {_ratio(a['p90_ms'], b['p90_ms'])} |")
    out.append("")
    out += _quality(report)
    out += _gates(report)
    out += _method(report)
    out += _widths(report, "widths.png" in images)
    out += _taper(report, "taper.png" in images)
    out += _trail(report, "trail.png" in images)
    out += _latency_target(report, "latency.png" in images)
    out += _time(report)
    out += _repeat(report)
    return "\n".join(out).rstrip() + "\n"


def _status(report: Mapping[str, Any]) -> list[str]:
    gates = report.get("gates") or []
    if report.get("status") == "rejected":
        missed = sum(not g["passed"] for g in gates)
        where = report.get("rejected_output")
        return [f"**Status: REJECTED** ({missed} of {len(gates)} gates missed); the output model was not written"
                + (f", the candidate is at `{where}`" if where else "") + ".", ""]
    if gates:
        return [f"**Status: accepted** ({'the gate' if len(gates) == 1 else f'all {len(gates)} gates'} met).", ""]
    return []


def _quality(report: Mapping[str, Any]) -> list[str]:
    original, pruned = report.get("original") or {}, report.get("pruned") or {}
    held = (report.get("calibration") or {}).get("holdout")
    out = [f"## Quality on the holdout ({held} samples, never trained on)" if held else
           "## Quality on the calibration data (no holdout)", "",
           "| | original | pruned |", "| --- | ---: | ---: |"]
    if "top1_agreement" in pruned:
        out.append(f"| fidelity (top-1 agreement with the original) | {original.get('top1_agreement', 1.0):.2%} | "
                   f"{pruned['top1_agreement']:.2%} |")
    if "accuracy" in pruned:
        out.append(f"| accuracy | {original['accuracy']:.2%} | {pruned['accuracy']:.2%} |")
    if "rel_error" in pruned:
        out.append(f"| relative output error | 0 | {pruned['rel_error']:.3g} |")
    if report.get("accuracy_drop") is not None:
        out += ["", f"Accuracy drop: {100 * report['accuracy_drop']:.2f} points."]
    return out + [""]


def _gates(report: Mapping[str, Any]) -> list[str]:
    gates = report.get("gates")
    if not gates:
        return []
    out = ["## Gates", "", "| gate | threshold | measured | result |", "| --- | ---: | ---: | --- |"]
    for g in gates:
        unit = g.get("unit", "")
        measured = "not measured: " + g.get("note", "") if g["measured"] is None else _unit(g["measured"], unit)
        out.append(f"| `{g['name']}` | {_unit(g['threshold'], unit)} | {measured} | {'ok' if g['passed'] else '**missed**'} |")
    return out + [""]


def _method(report: Mapping[str, Any]) -> list[str]:
    options = report.get("method_options") or {}
    calib = report.get("calibration") or {}
    train = report.get("training") or {}
    out = ["## Method", "", f"`{report.get('method')}` with "
           + (", ".join(f"`{k}={v}`" for k, v in options.items() if v is not None) or "its defaults") + "."]
    if train:
        out.append(f"Training: {train.get('epochs')} epochs, batch {train.get('batch_size')}, "
                   f"{train.get('optimizer')} lr {train.get('lr')}, seed {train.get('seed')}, on {report.get('device')}.")
        probe = train.get("lr_probe")
        if probe:  # no --lr: the rate was probed on the unpruned model (onnxprune.training.lr_probe)
            tried = ", ".join(f"{t['lr']:g}: {100 * t['fraction']:.1f}%" + ("" if t["accepted"] else " (rejected)")
                              for t in probe["trials"])
            out.append(f"Learning rate probed: {probe['lr']:g}. Share of the way from the original to a constant "
                       f"output after {probe['steps']} steps, limit {100 * probe['tol']:g}%: {tried}.")
    if calib:
        out.append(f"Calibration: `{calib.get('source')}`, {calib.get('train')} training samples, "
                   f"loss {calib.get('loss')}" + (" (synthetic data: quality unknown)" if calib.get("synthetic") else "") + ".")
    return out + [""]


def _widths(report: Mapping[str, Any], image: bool) -> list[str]:
    widths = report.get("layer_widths")
    if not widths:
        return []
    out = ["## Layer widths", ""] + (["![layer widths before and after](widths.png)", ""] if image else [])
    out += ["| layer | op | before | after | kept |", "| --- | --- | ---: | ---: | ---: |"]
    out += [f"| `{w['name']}` | {w['op_type']} | {w['before']} | {w['after'] or 'removed'} | {_ratio(w['after'], w['before'])} |"
            for w in widths]
    return out + [""]


def _taper(report: Mapping[str, Any], image: bool) -> list[str]:
    taper = taper_points(report)
    if taper is None:
        return []
    points, x_key = taper
    out = ["## Along the training (holdout, torch model per epoch)", ""]
    out += ["![fidelity and accuracy vs " + x_key + "](taper.png)", ""] if image else []
    out += [f"| point | {'MACs' if x_key == 'macs' else 'sparsity'} | fidelity | accuracy |", "| --- | ---: | ---: | ---: |"]
    for p in points:
        x = format_count(p[x_key]) if x_key == "macs" else f"{p[x_key]:.1%}"
        out.append(f"| {p['label']} | {x} | {_pct(p['fidelity'])} | {_pct(p['accuracy'])} |")
    return out + [""]


def _trail(report: Mapping[str, Any], image: bool) -> list[str]:
    rows = report.get("trail")
    if not rows:
        return []
    out = ["## Trail (models written at MAC levels, not fine-tuned)", ""]
    out += ["![trail](trail.png)", ""] if image else []
    out += ["| file | MACs | params | fidelity | accuracy |", "| --- | ---: | ---: | ---: | ---: |"]
    out += [f"| `{r.get('file', '')}` | {format_count(r['macs'])} | {format_count(r.get('params', 0))} | "
            f"{_pct(r.get('top1_agreement'))} | {_pct(r.get('accuracy'))} |" for r in rows if "macs" in r]
    return out + [""]


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.4g} ms"


def _latency_target(report: Mapping[str, Any], image: bool) -> list[str]:
    target = report.get("latency_target")
    if not target:
        return []
    heading = (f"## Latency target: {target['target_ms']:.4g} ms on {target.get('provider', 'cpu')}, "
               f"batch {target.get('batch', 1)} ({'met' if target.get('met') else 'NOT met'})")
    out = [heading, ""]
    out += ["![latency vs MACs](latency.png)", ""] if image else []
    out += ["| round | MAC fraction | MACs | latency p50 | meets | original, timed alongside |",
            "| ---: | ---: | ---: | ---: | --- | ---: |"]
    out += [f"| {i} | {c['mac_fraction']:.3f} | {format_count(c['macs']) if c.get('macs') is not None else ''} | "
            f"{c['latency_ms']:.4g} ms | {'yes' if c['met'] else 'no'} | {_ms(c.get('original_ms'))} |"
            for i, c in enumerate(target["curve"])]
    if target.get("chosen") is not None:
        why = ("the largest model that meets the target" if target.get("met")
               else "none met the target: the fastest model measured")
        out += ["", f"Chosen: round {target['chosen']} ({why})."]
    return out + [""]


def _time(report: Mapping[str, Any]) -> list[str]:
    out = ["## Time", ""]
    phases = report.get("phases") or {}
    if phases:
        out += ["| phase | seconds |", "| --- | ---: |"] + [f"| {k} | {v:.2f} |" for k, v in phases.items()]
        out.append("")
    if report.get("seconds") is not None:
        out.append(f"Prune run (load to verified model): {report['seconds']:.1f} s on {report.get('device')}.")
    return out + [""]


def _repeat(report: Mapping[str, Any]) -> list[str]:
    sources = report.get("option_sources") or {}
    # options left at their defaults are implied; listing them would also name other methods'
    # options, which the prune command refuses for this method
    options = {k: v for k, v in (report.get("options") or {}).items() if sources.get(k, "default") != "default"}
    if not options:
        return []
    return ["## Repeat this run", "", "Save as `run.toml` and run `onnxprune IN.onnx --config run.toml`:", "",
            "```toml", to_toml(options).rstrip(), "```", ""]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1%}" if b else "n/a"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _unit(value: float, unit: str) -> str:
    return f"{value:.4g} ms" if unit == "ms" else f"{value:.2f}x" if unit == "x" else f"{value:.2%}"


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
