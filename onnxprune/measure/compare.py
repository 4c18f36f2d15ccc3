"""Models measured side by side on onnxruntime: what ``onnxprune bench`` and :func:`onnxprune.measure` report.

For every (provider, batch) pair the models are timed interleaved by
:func:`onnxprune.measure.latency.measure_latency` and compared with the first model:
``speedup = p50(first) / p50(model)``. MACs and params are counted per sample on the graph by
:func:`onnxprune.graph.macs.count_macs` at the resolved input shapes (batch 1). Inputs are random
(standard normal) unless ``calib`` names an .npz keyed by input name or a folder of images.
A model with a fixed batch B (inputs declared [B, ...]) is measured at batch B, which is then the
default batch; another batch is one error line (``docs/fixed-batch.md``). A GPU provider that
cannot run here is named in one warning and dropped; when no requested provider runs, the CPU is
measured instead.

Torch-free: numpy, onnx and onnxruntime only (docs/target-install.md).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.calibration.images import load_image_folder
from onnxprune.errors import CalibrationError, OnnxPruneError, ShapeError
from onnxprune.graph.batching import fixed_batch
from onnxprune.graph.macs import count_macs, count_params
from onnxprune.graph.modelio import load_model, model_size_bytes
from onnxprune.graph.runtime_checks import check_batch_memory, check_runtime_opset
from onnxprune.graph.shapes import graph_inputs, random_feeds, resolve_input_shapes
from onnxprune.measure import latency

log = logging.getLogger(__name__)

MEMORY_NOTES = {
    "rss-peak-delta": "growth of the process's peak RSS while the session is created and run "
    "(weights, arena, outputs)",
    "device-used-delta": "GPU memory the session holds after its runs (onnxruntime's arena keeps "
    "its peak)",
    "unavailable": "not measurable on this platform",
}


@dataclasses.dataclass
class _Entry:
    """One model to measure, with the figures that do not depend on the provider or batch."""

    label: str
    path: str
    model: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]  # batch 1
    macs: int | None
    params: int
    size_bytes: int


def _load(paths: tuple[str, ...], overrides: dict[str, tuple[int, ...]]) -> list[_Entry]:
    entries = []
    for path in paths:
        model = load_model(path)
        check_runtime_opset(model, path)  # one line naming an opset onnxruntime cannot run
        label = Path(path).stem
        names = {value.name for value in graph_inputs(model)}
        shapes = resolve_input_shapes(model, {k: v for k, v in overrides.items() if k in names})
        macs, params = _cost(model, shapes, label)
        if macs is not None and fixed_batch(model):  # counted for one call of B samples
            macs //= fixed_batch(model)
        entries.append(_Entry(label, str(path), model, shapes, macs, params, model_size_bytes(path)))
    unused = set(overrides) - {v.name for entry in entries for v in graph_inputs(entry.model)}
    if unused:
        raise ShapeError(f"--input-shape names {sorted(unused)}, which no model has as an input")
    seen: dict[str, int] = {}
    for entry in entries:  # the same file name twice (a/model.onnx, b/model.onnx) stays apart
        seen[entry.label] = seen.get(entry.label, 0) + 1
        if seen[entry.label] > 1:
            entry.label = f"{entry.label}#{seen[entry.label]}"
    return entries


def _cost(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], label: str) -> tuple[int | None, int]:
    try:
        cost = count_macs(model, shapes)
    except (OnnxPruneError, KeyError, ValueError) as exc:  # a cost we cannot count is not fatal
        log.warning("%s: MACs not counted (%s)", label, exc)
        return None, count_params(model)
    return cost.total_macs, cost.total_params


def _batched_shapes(entry: _Entry, batch: int) -> dict[str, tuple[int, ...]]:
    """The entry's shapes with axis 0 set to ``batch`` for every input whose axis 0 is dynamic."""
    out, batchable = {}, False
    for value in graph_inputs(entry.model):
        shape = entry.shapes[value.name]
        dims = value.type.tensor_type.shape.dim
        dynamic = len(dims) > 0 and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)
        out[value.name] = (batch, *shape[1:]) if dynamic else shape
        batchable |= dynamic
    if not batchable and batch != 1 and fixed_batch(entry.model) is None:
        raise ShapeError(f"{entry.label}: no input has a dynamic batch axis; --batch {batch} is not possible")
    return out


def _npz_feeds(path: Path, entry: _Entry, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"--calib {path}: cannot read as .npz ({exc})") from None
    feeds = {}
    for value in graph_inputs(entry.model):
        if value.name not in data.files:
            raise CalibrationError(f"--calib {path}: no array {value.name!r} for {entry.label} (has {data.files})")
        array, want = data[value.name], shapes[value.name]
        if array.shape[1:] != want[1:]:
            raise CalibrationError(
                f"--calib {path}: {value.name!r} has rows of shape {array.shape[1:]}, "
                f"{entry.label} needs {want[1:]}"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if array.dtype != dtype:
            raise CalibrationError(f"--calib {path}: {value.name!r} is {array.dtype}, {entry.label} needs {dtype}")
        feeds[value.name] = array
    return feeds


def _image_feeds(path: Path, entry: _Entry, shapes: dict[str, tuple[int, ...]], image_args: dict):
    inputs = graph_inputs(entry.model)
    if len(inputs) != 1:
        raise CalibrationError(f"--calib {path}: an image folder feeds one input, {entry.label} has {len(inputs)}")
    name = inputs[0].name
    images, _, _ = load_image_folder(path, shapes[name], **image_args)
    return {name: images}


def usable_providers(requested: Sequence[str], threads: int | None) -> tuple[list[str], str | None]:
    """The requested providers that run here, and a warning naming those that do not (None when
    all run); when none of the requested ones runs, the CPU is measured instead."""
    for provider in requested:
        if provider not in latency.PROVIDERS:
            choices = ", ".join(latency.PROVIDERS)
            raise OnnxPruneError(f"--providers: unknown provider {provider!r} (choose from {choices})")
    usable, skipped = [], []
    for provider in dict.fromkeys(requested):
        ok, reason = latency.provider_status(provider, threads)
        if ok:
            usable.append(provider)
        else:
            skipped.append(f"{provider} skipped: {reason}")
    warning = None
    if skipped:
        warning = "; ".join(skipped) + ("" if usable else "; measuring on the CPU instead")
    return usable or ["cpu"], warning


def compare_models(paths: Sequence[str], *, providers: Sequence[str] = ("cpu",), batches: Sequence[int] | None = None,
                   threads: int | None = None, seconds: float = 3.0, min_runs: int = 20, warmup: int = 5,
                   input_shapes: dict[str, tuple[int, ...]] | None = None, calib: str | None = None,
                   image_args: dict[str, Any] | None = None, seed: int = 0,
                   warn=log.warning) -> list[dict[str, Any]]:
    """One row per (provider, batch, model): latency figures, size, MACs, params, speedup over the
    first model. ``batches=None``: the models' fixed batch, or 1. ``warn`` receives the one line
    naming providers that cannot run here."""
    if batches is not None and any(b < 1 for b in batches):
        raise OnnxPruneError(f"--batch: sizes must be >= 1, got {list(batches)}")
    if min_runs < 1 or seconds < 0 or warmup < 0:
        raise OnnxPruneError("--min-runs must be >= 1, --seconds and --warmup >= 0")
    models = list(paths)
    input_shape = input_shapes or {}
    entries = _load(models, dict(input_shape))
    protos, labels = [entry.model for entry in entries], [entry.label for entry in entries]
    if batches is None:
        batches = [latency.resolve_batch(protos, None, "--batch", labels)]  # a fixed batch, or 1
    for batch in batches:
        latency.resolve_batch(protos, batch, "--batch", labels)  # one line on a batch a model cannot take
    providers, skipped = usable_providers([p.lower() for p in providers], threads)
    if skipped:
        warn(skipped)
    image_args = image_args or {}

    for batch in batches:  # before timing anything: a batch whose tensors cannot fit is refused
        for entry in entries:
            check_batch_memory(entry.model, _batched_shapes(entry, batch), entry.label)
    results = []
    for batch in batches:
        feeds = []
        for entry in entries:
            shapes = _batched_shapes(entry, batch)
            if calib is None:
                feeds.append(random_feeds(entry.model, shapes, seed))
            elif Path(calib).is_dir():
                feeds.append(_image_feeds(Path(calib), entry, shapes, image_args))
            else:
                feeds.append(_npz_feeds(Path(calib), entry, shapes))
        for provider in providers:
            log.info("measuring %d models on %s at batch %d", len(entries), provider, batch)
            stats = latency.measure_latency(
                [entry.model for entry in entries], feeds, provider=provider, threads=threads, batch=batch,
                seconds=seconds, min_runs=min_runs, warmup=warmup, names=[entry.label for entry in entries],
            )
            for entry, stat in zip(entries, stats):
                results.append({**stat.to_dict(), "path": entry.path, "size_bytes": entry.size_bytes,
                                "macs": entry.macs, "params": entry.params,
                                "speedup": stats[0].p50_ms / stat.p50_ms})
    results.sort(key=lambda row: providers.index(row["provider"]))  # stable: batch, then model order
    return results
