"""The prune command's options for the acceptance gates, latency measurement and latency targets
(:class:`onnxprune.run.gated.CiOptions` holds their values; a missed gate exits with code 3)."""

from __future__ import annotations

import click

from onnxprune.measure.latency import PROVIDERS
from onnxprune.run.gated import NAMES, CiOptions

OPTIONS = [
    click.Option(
        ["--min-fidelity"],
        type=click.FloatRange(0.0, 1.0),
        default=CiOptions.default("min_fidelity"),
        metavar="F",
        help="CI gate: top-1 agreement with the original on the holdout must be >= F (e.g. 0.98).",
    ),
    click.Option(
        ["--max-accuracy-drop"],
        type=click.FloatRange(0.0, 1.0),
        default=CiOptions.default("max_accuracy_drop"),
        metavar="D",
        help="CI gate: holdout accuracy may drop by at most D (fraction: 0.01 = one point; needs labels).",
    ),
    click.Option(
        ["--max-latency-ms"],
        type=click.FloatRange(0.0, min_open=True),
        default=CiOptions.default("max_latency_ms"),
        metavar="MS",
        help="CI gate: p50 latency of the pruned model (one call of --latency-batch rows, --providers) must be <= MS.",
    ),
    click.Option(
        ["--min-speedup"],
        type=click.FloatRange(0.0, min_open=True),
        default=CiOptions.default("min_speedup"),
        metavar="S",
        help="CI gate: p50 latency of the original / of the pruned model must be >= S.",
    ),
    click.Option(
        ["--collapse-agreement"],
        type=click.FloatRange(0.0, 1.0),
        default=CiOptions.default("collapse_agreement"),
        show_default=True,
        metavar="F",
        help="Collapse check, on by default: holdout top-1 agreement below F rejects the model (0 = off).",
    ),
    click.Option(
        ["--collapse-error"],
        type=click.FloatRange(0.0),
        default=CiOptions.default("collapse_error"),
        show_default=True,
        metavar="E",
        help="Collapse check for models without class logits: relative output error above E rejects "
        "the model (0 = off).",
    ),
    click.Option(
        ["--providers", "latency_provider"],
        type=click.Choice(PROVIDERS),
        default=CiOptions.default("latency_provider"),
        help="Execution provider latency is measured on (gates, report, --target-latency-ms).",
    ),
    click.Option(
        ["--latency-threads"],
        type=click.IntRange(1),
        default=CiOptions.default("latency_threads"),
        help="onnxruntime intra-op threads for latency measurements.",
    ),
    click.Option(
        ["--latency-seconds"],
        type=click.FloatRange(0.0),
        default=CiOptions.default("latency_seconds"),
        help="Seconds spent timing each comparison; 0 leaves latency out of a report folder "
        "unless a latency gate needs it.",
    ),
    click.Option(
        ["--latency-batch"],
        type=click.IntRange(1),
        default=CiOptions.default("latency_batch"),
        metavar="N",
        help="Rows per timed call (gates, report, --target-latency-ms). Small models are dominated by "
        "the fixed per-call overhead at batch 1; a larger batch times their compute. Needs a "
        "dynamic (or equal) batch dimension.",
    ),
    click.Option(
        ["--target-latency-ms"],
        type=click.FloatRange(0.0, min_open=True),
        default=CiOptions.default("target_latency_ms"),
        metavar="MS",
        help="Structured methods (--target-macs): search the MAC target until the written model's p50 "
        "latency (--latency-batch rows per call, --providers) is <= MS; one training run per round.",
    ),
    click.Option(
        ["--latency-rounds"],
        type=click.IntRange(1),
        default=CiOptions.default("latency_rounds"),
        help="Most training runs --target-latency-ms may use.",
    ),
]

if tuple(option.name for option in OPTIONS) != NAMES:  # the values CiOptions.pop_from takes
    raise ImportError(f"gate options {[o.name for o in OPTIONS]} differ from CiOptions' names {NAMES}")
