"""``onnxprune apply IN.onnx --plan plan.json --out OUT.onnx``: apply a pruning plan, no training.

The plan's group and branch ids refer to the normalized graph (weights as initializers, one per
op), which is what ``inspect`` and the pruning methods see. Without ``--plan`` only dead
structure is removed: channels whose weights another tool zeroed become physically smaller.
"""

from __future__ import annotations

import click

from onnxprune import api
from onnxprune.cli.shared_options import input_shape_option
from onnxprune.graph.macs import format_count
from onnxprune.graph.shapes import parse_input_shapes


@click.command("apply")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(dir_okay=True))
@click.option("--plan", "plan_path", type=click.Path(), default=None,
              help="Pruning plan JSON (docs/passes.md); without it only dead structure is removed.")
@click.option("--out", "out_path", required=True, type=click.Path(), help="Where to write the pruned model.")
@input_shape_option
def command(model_path: str, plan_path: str | None, out_path: str, input_shape: tuple[str, ...]) -> None:
    """Physically remove what a pruning plan names (and all-zero channels) from IN.onnx."""
    applied = api.apply(model_path, plan_path, out_path, input_shapes=parse_input_shapes(input_shape))
    for label, (old, new) in (("MACs", applied.macs), ("params", applied.params)):
        click.echo(f"{label:<7} {format_count(old):>9} -> {format_count(new):>9}  ({new / max(old, 1):.1%})")
    click.echo(f"wrote {out_path}")
