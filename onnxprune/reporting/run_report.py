"""The run report: what a prune run did, as one JSON document (``--report run.json``) and a
short printed summary. Field meanings are documented in docs/usage.md ("The run report").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import __version__
from onnxprune.graph.macs import PRUNABLE_OPS, format_count

REPORT_VERSION = 1


def prunable_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Weights of Conv/ConvTranspose/Gemm/MatMul nodes that are initializers or Constant nodes
    (Paddle, TF converters), by name."""
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and \
                [a.name for a in node.attribute] == ["value"]:
            inits.setdefault(node.output[0], node.attribute[0].t)
    out = {}
    for node in model.graph.node:
        if node.op_type in PRUNABLE_OPS:
            for name in node.input[1:2] if node.op_type != "MatMul" else node.input[:2]:
                if name in inits:
                    out[name] = numpy_helper.to_array(inits[name])
    return out


def layer_sparsity(model: onnx.ModelProto) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": list(a.shape), "size": int(a.size), "nonzero": int(np.count_nonzero(a)),
         "sparsity": 1.0 - np.count_nonzero(a) / max(a.size, 1)}
        for name, a in prunable_initializers(model).items()
    ]


def nonzero_weights(model: onnx.ModelProto) -> dict[str, int]:
    layers = layer_sparsity(model)
    return {"nonzero": sum(x["nonzero"] for x in layers), "total": sum(x["size"] for x in layers)}


def build_run_report(*, config, method, plan, before, after, nonzero_before, nonzero_after, final, baseline,
                     history, seconds, samples, device, world_size, untied_params=0,
                     method_options=None) -> dict[str, Any]:
    """``untied_params``: parameters the import added by giving each consuming op its own copy of
    a shared initializer (so each trains on its own); the written model keeps those copies.
    ``method_options``: the method's options in full (defaults included) [default: as given]."""
    return {
        "report_version": REPORT_VERSION,
        "tool_version": __version__,
        "input": os.fspath(config.model),
        "output": None if config.out is None else os.fspath(config.out),
        "method": method.name,
        "method_options": _plain(config.method_options if method_options is None else method_options),
        "training": _plain({**vars(config.train), "loss": config.loss, "temperature": config.temperature,
                            "holdout": config.holdout}),
        "calibration": {"source": config.calib, "labels": config.labels, **samples},
        "device": device,
        "world_size": world_size,
        "macs": {"before": before.total_macs, "after": after.total_macs},
        "params": {"before": before.total_params, "after": after.total_params, "untied": untied_params},
        "prunable_weights": {"before": nonzero_before, "after": nonzero_after},
        "original": baseline,
        "pruned": final,
        "accuracy_drop": (baseline["accuracy"] - final["accuracy"]) if "accuracy" in final else None,
        "plan": _plan_dict(plan),
        "layers": [],
        "history": history,
        "seconds": seconds,
        "options": _plain(config.options),
        "option_sources": _plain(config.option_sources),
    }


def add_layers(report: dict[str, Any], model: onnx.ModelProto, before, after) -> None:
    macs_after = {layer.node: layer.macs for layer in after.layers}
    by_weight = {layer.weight: layer for layer in before.layers if layer.weight}
    for entry in layer_sparsity(model):
        layer = by_weight.get(entry["name"])
        if layer is not None:
            entry.update(node=layer.node, op_type=layer.op_type, macs_before=layer.macs,
                         macs_after=macs_after.get(layer.node))
        report["layers"].append(entry)


def _plan_dict(plan) -> dict[str, Any]:
    return _plain(plan.to_json())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def run_metadata(report: dict[str, Any]) -> dict[str, str]:
    """What the written model records about the run that made it (its ``metadata_props``)."""
    return {
        "onnxprune.version": report["tool_version"],
        "onnxprune.method": report["method"],
        "onnxprune.method_params": json.dumps(report["method_options"], sort_keys=True, default=str),
        "onnxprune.macs_before": str(report["macs"]["before"]),
        "onnxprune.macs_after": str(report["macs"]["after"]),
        "onnxprune.params_before": str(report["params"]["before"]),
        "onnxprune.params_after": str(report["params"]["after"]),
        "onnxprune.torch_threads": str(report["training"]["torch_threads"]),
    }


def write_report_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_plain(report), indent=2) + "\n")
    os.replace(tmp, path)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The short summary the prune command prints."""
    m, p, w = report["macs"], report["params"], report["prunable_weights"]
    pruned, orig = report["pruned"], report["original"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1%}" if b else "n/a"

    def change(pair: dict) -> str:
        return f"{format_count(pair['before'])} -> {format_count(pair['after'])} ({ratio(pair['after'], pair['before'])})"

    lines = [
        f"method      {report['method']} {json.dumps(report['method_options'], sort_keys=True)}",
        f"MACs        {change(m)}",
        f"params      {change(p)}" + (f" (+{format_count(p['untied'])} from shared weights given one copy per use)"
                                      if p.get("untied", 0) > 0 and p["after"] > p["before"] else ""),
        f"nonzero     {format_count(w['before']['nonzero'])} -> {format_count(w['after']['nonzero'])} "
        f"prunable weights ({ratio(w['after']['nonzero'], w['before']['total'])} of {format_count(w['before']['total'])})",
    ]
    if "top1_agreement" in pruned:
        lines.append(f"fidelity    top-1 agreement {pruned['top1_agreement']:.2%}, "
                     f"rel. output error {pruned['rel_error']:.3g}")
    elif "mean_cosine" in pruned:  # an embedding output (calibration.losses.output_kinds)
        lines.append(f"fidelity    mean cosine {pruned['mean_cosine']:.4f}, rel. output error {pruned['rel_error']:.3g}")
    else:
        lines.append(f"fidelity    rel. output error {pruned['rel_error']:.3g}, max abs {pruned['max_abs_error']:.3g}")
    if "accuracy" in pruned:
        calib = report["calibration"]
        # with --holdout 0 the figures come from the training data, not from a holdout
        where = (f"holdout, {calib['holdout']} samples" if calib.get("holdout") else
                 f"training data, {calib.get('train')} samples, no holdout")
        lines.append(f"accuracy    {orig['accuracy']:.2%} -> {pruned['accuracy']:.2%} ({where})")
    lines.append(f"time        {report['seconds']:.1f} s on {report['device']}"
                 + (f" x{report['world_size']}" if report['world_size'] > 1 else ""))
    return lines
