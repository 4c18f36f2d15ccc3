"""``onnxprune bench A.onnx [B.onnx ...]``: latency, throughput, memory, size, MACs, params.

For every (provider, batch) pair the models are timed interleaved by
:func:`onnxprune.bench.latency.measure_latency` and compared with the first model:
``speedup = p50(first) / p50(model)``. MACs and params are counted per sample on the graph by
:func:`onnxprune.graph.macs.count_macs` at the resolved input shapes (batch 1). Inputs are random
(standard normal) unless ``--calib`` gives an .npz keyed by input name or a folder of images.
A model with a fixed batch B (inputs declared [B, ...]) is measured at batch B, which is then the
default of ``--batch``; another ``--batch`` is one error line (``docs/fixed-batch.md``).
A GPU provider that cannot run here is named in one warning line on stderr and dropped; when no
requested provider runs, the CPU is measured instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click
import numpy as np
import onnx

from onnxprune.bench import latency
from onnxprune.calibration.images import image_options, load_image_folder
from onnxprune.cli.config_file import config_option, effective_config
from onnxprune.errors import CalibrationError, OnnxPruneError, ShapeError
from onnxprune.graph.batching import fixed_batch
from onnxprune.graph.modelio import load_model, model_size_bytes
from onnxprune.graph.runtime_checks import check_batch_memory, check_runtime_opset
from onnxprune.graph.shapes import graph_inputs, parse_input_shapes, random_feeds, resolve_input_shapes

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


def _split_list(text: str, option: str, convert=str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [convert(item) for item in items]
    except ValueError:
        values = []
    if not values:
        raise OnnxPruneError(f"{option}: cannot read {text!r} (expected a comma-separated list)")
    return values


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
    from onnxprune.graph.macs import count_macs, count_params

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


def _usable_providers(requested: list[str], threads: int | None) -> list[str]:
    """The requested providers that run here. Those that do not are named in one warning line;
    when none of the requested ones runs, the CPU is measured instead."""
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
    if skipped:
        tail = "" if usable else "; measuring on the CPU instead"
        click.echo(f"warning: {'; '.join(skipped)}{tail}", err=True)
    return usable or ["cpu"]


@click.command(name="bench")
@config_option
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--providers", default="cpu", show_default=True, help="Comma list of cpu, cuda, tensorrt.")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma list of batch sizes.")
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: all CPUs].")
@click.option("--seconds", type=float, default=3.0, show_default=True,
              help="Time budget per provider and batch, shared by the models.")
@click.option("--min-runs", type=int, default=20, show_default=True, help="Timed runs per model at least.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs per model first.")
@click.option("--input-shape", multiple=True, help="NAME=1x3x224x224 for dynamic dimensions.")
@click.option("--calib", type=click.Path(exists=False), default=None,
              help="Inputs: .npz keyed by input name, or a folder of images [default: random].")
@image_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.pass_context
def command(ctx: click.Context, models, providers, batches, threads, seconds, min_runs, warmup,
            input_shape, calib, mean, std, channel_order, layout, seed, as_json, config) -> None:
    """Measure ONNX models side by side on onnxruntime; speedups are relative to the first."""
    from onnxprune.cli.main import reject_non_finite

    reject_non_finite(ctx)  # nan / inf in any float option
    batches = _split_list(batches, "--batch", int)
    if any(b < 1 for b in batches):
        raise OnnxPruneError(f"--batch: sizes must be >= 1, got {batches}")
    if min_runs < 1 or seconds < 0 or warmup < 0:
        raise OnnxPruneError("--min-runs must be >= 1, --seconds and --warmup >= 0")
    entries = _load(models, parse_input_shapes(list(input_shape)))
    protos, labels = [entry.model for entry in entries], [entry.label for entry in entries]
    if ctx.get_parameter_source("batches") == click.core.ParameterSource.DEFAULT:
        batches = [latency.resolve_batch(protos, None, "--batch", labels)]  # a fixed batch, or 1
    for batch in batches:
        latency.resolve_batch(protos, batch, "--batch", labels)  # one line on a batch a model cannot take
    providers = _usable_providers(_split_list(providers, "--providers", str.lower), threads)
    image_args = dict(mean=0.0 if mean is None else mean, std=1.0 if std is None else std,
                      channel_order=channel_order, layout=layout)

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

    if as_json:
        kinds = sorted({row["memory_kind"] for row in results})
        notes = {
            "memory": {kind: MEMORY_NOTES.get(kind, kind) for kind in kinds},
            "macs": "MACs and params per sample, at the resolved input shapes (batch 1)",
            "speedup": "p50 of the first model / p50 of this model, same provider and batch",
        }
        report = {"results": results, "notes": notes, "config": effective_config(ctx)}
        click.echo(json.dumps(report, indent=2))
    else:
        _print_table(results)


_COLUMNS = ["provider", "batch", "p50 ms", "p90 ms", "p99 ms", "mean±std ms", "runs", "samples/s",
            "peak MiB", "size MiB", "MACs", "params", "speedup"]


def _print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    from onnxprune.graph.macs import format_count

    kind = results[0]["memory_kind"]
    table = Table(
        title=f"onnxruntime latency, {results[0]['threads']} intra-op threads",
        caption=f"peak MiB ({kind}): {MEMORY_NOTES.get(kind, kind)}. MACs and params per sample. "
        "speedup = p50 of the first model / p50.",
    )
    table.add_column("model", no_wrap=True, min_width=max(len(row["name"]) for row in results))
    for name in _COLUMNS:
        table.add_column(name, justify="left" if name == "provider" else "right")
    previous = None
    for row in results:
        group = (row["provider"], row["batch"])
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        peak = row["peak_memory_bytes"]
        table.add_row(
            row["name"], row["provider"], str(row["batch"]), f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}",
            f"{row['p99_ms']:.3f}", f"{row['mean_ms']:.3f}±{row['std_ms']:.3f}", str(row["runs"]),
            f"{row['throughput']:.1f}", "n/a" if peak is None else f"{peak / 2**20:.1f}",
            f"{row['size_bytes'] / 2**20:.2f}", "n/a" if row["macs"] is None else format_count(row["macs"]),
            format_count(row["params"]), f"{row['speedup']:.2f}x",
        )
    console = Console()
    # never squeeze the figures: as wide as the table needs, even when stdout is a pipe
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(width=max(console.width, needed)).print(table)
