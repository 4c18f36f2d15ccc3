"""``onnxprune profile MODEL --out latency.json``: a per-layer latency table on the target.

The command parses options and writes; :func:`onnxprune.measure.profile.profile_model` measures
(its module docstring says how). Torch-free, like ``bench`` (docs/target-install.md); the table
is read by ``--latency-table`` of the structured methods (docs/latency-table.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxprune.cli.bench import _split_list
from onnxprune.cli.shared_options import input_shape_option
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.shapes import parse_input_shapes


@click.command(name="profile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The latency table (JSON).")
@click.option("--providers", default="cpu", show_default=True, help="Comma list of cpu, cuda, tensorrt.")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma list of batch sizes.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--seconds", type=click.FloatRange(0, min_open=True), default=0.6, show_default=True,
              help="Time budget of one layer's interleaved sweep.")
@click.option("--min-runs", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per width at least.")
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True, help="Untimed runs per width first.")
@input_shape_option
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: wall-clock time per call; cpu: the calling thread's CPU time (cpu provider, 1 thread; "
                   "for a shared, overloaded machine: time preempted is not counted).")
@click.option("--layers", default=None, help="Comma list of node names to profile [default: every prunable layer].")
@click.pass_context
def command(ctx: click.Context, model, out, providers, batches, threads, seconds, min_runs, warmup, input_shape,
            clock, layers) -> None:
    """Time each prunable layer of MODEL over a grid of kept widths; write a latency table."""
    from onnxprune.cli.main import reject_non_finite
    from onnxprune.measure.compare import usable_providers
    from onnxprune.measure.profile import profile_model

    reject_non_finite(ctx)
    target = Path(out)
    if not target.parent.is_dir():  # refused before minutes of timing, not after
        raise OnnxPruneError(f"--out {out}: the directory {target.parent} does not exist")
    wanted = _split_list(providers, "--providers", str.lower)
    usable, warning = usable_providers(wanted, threads)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    batch_list = _split_list(batches, "--batch", int)
    if min(batch_list) < 1:
        raise OnnxPruneError(f"--batch must be >= 1, got {min(batch_list)}")
    table = profile_model(model, providers=usable, batches=batch_list, threads=threads,
                          seconds=seconds, min_runs=min_runs, warmup=warmup,
                          input_shapes=parse_input_shapes(list(input_shape)),
                          layers=_split_list(layers, "--layers") if layers else None, clock=clock,
                          progress=lambda line: click.echo(line, err=True))
    try:
        target.write_text(json.dumps(table, indent=1) + "\n")
    except OSError as exc:
        raise OnnxPruneError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    for profile in table["profiles"]:
        click.echo(f"{profile['provider']} batch {profile['batch']}: {len(profile['layers'])} layers, model "
                   f"{profile['model_p50_ms']:.3f} ms, layers {profile['layers_sum_ms']:.3f} ms, remainder "
                   f"{profile['remainder_ms']:.3f} ms -> {out}")
