"""``onnxprune bench A.onnx [B.onnx ...]``: latency, throughput, memory, size, MACs, params.

The command parses options and prints; :func:`onnxprune.measure.compare.compare_models` measures
(the module docstring there says how). A GPU provider that cannot run here is named in one
warning line on stderr and dropped.
"""

from __future__ import annotations

import json

import click

from onnxprune.cli.config_file import config_option, effective_config
from onnxprune.cli.main import reject_non_finite
from onnxprune.cli.shared_options import image_options, input_shape_option
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.macs import format_count
from onnxprune.graph.shapes import parse_input_shapes
from onnxprune.measure.compare import MEMORY_NOTES, compare_models


def _split_list(text: str, option: str, convert=str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [convert(item) for item in items]
    except ValueError:
        values = []
    if not values:
        raise OnnxPruneError(f"{option}: cannot read {text!r} (expected a comma-separated list)")
    return values


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
@input_shape_option
@click.option("--calib", type=click.Path(exists=False), default=None,
              help="Inputs: .npz keyed by input name, or a folder of images [default: random].")
@image_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.pass_context
def command(ctx: click.Context, models, providers, batches, threads, seconds, min_runs, warmup,
            input_shape, calib, mean, std, channel_order, layout, seed, as_json, config) -> None:
    """Measure ONNX models side by side on onnxruntime; speedups are relative to the first."""
    reject_non_finite(ctx)  # nan / inf in any float option
    default_batch = ctx.get_parameter_source("batches") == click.core.ParameterSource.DEFAULT
    results = compare_models(
        models, providers=_split_list(providers, "--providers", str.lower),
        batches=None if default_batch else _split_list(batches, "--batch", int), threads=threads, seconds=seconds,
        min_runs=min_runs, warmup=warmup, input_shapes=parse_input_shapes(list(input_shape)), calib=calib,
        image_args=dict(mean=0.0 if mean is None else mean, std=1.0 if std is None else std,
                        channel_order=channel_order, layout=layout),
        seed=seed, warn=lambda line: click.echo(f"warning: {line}", err=True))
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
