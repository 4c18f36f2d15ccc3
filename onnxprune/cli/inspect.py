"""``onnxprune inspect MODEL.onnx``: what the model costs and what could be pruned.

Prints one row per MAC-bearing layer (node, op, weight shape, MACs, params, whether its output
channels/units can be pruned and, if not, why), the channel groups with their sizes, the totals,
and the import check (torch vs onnxruntime). ``--plan plan.json`` adds what the plan removes and
the MACs after it; ``--json`` prints the same data as JSON.
"""

from __future__ import annotations

import json
import logging

import click

from onnxprune.cli.shared_options import input_shape_option
from onnxprune.graph.macs import format_count
from onnxprune.graph.modelio import load_model
from onnxprune.graph.shapes import parse_input_shapes, resolve_input_shapes
from onnxprune.reporting.inspection import inspection_report

log = logging.getLogger(__name__)

@click.command("inspect")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
@input_shape_option
@click.option("--plan", "plan_path", type=click.Path(), default=None, help="Show what a pruning plan removes.")
@click.option("--no-import-check", is_flag=True, help="Skip importing into torch (cost table only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def command(model_path: str, input_shape: tuple[str, ...], plan_path: str | None, no_import_check: bool, as_json: bool) -> None:
    """Per-layer MACs, params and prunability of MODEL.onnx."""
    model = load_model(model_path)
    shapes = resolve_input_shapes(model, parse_input_shapes(input_shape))
    report = inspection_report(model, shapes, plan=plan_path, import_check=not no_import_check)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_tables(report)


def _print_tables(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="layers", show_lines=False)
    for column in ("node", "op", "weight", "MACs", "params", "prunable"):
        table.add_column(column, justify="right" if column in ("MACs", "params") else "left")
    for row in report["layers"]:
        shape = "x".join(map(str, row["weight_shape"])) if row["weight_shape"] else "-"
        prunable = "yes" if row["prunable"] else ("no: " + (row["why_not"] or "no channel group"))
        table.add_row(row["node"], row["op"], shape, format_count(row["macs"]), format_count(row["params"]), prunable)
    console.print(table)
    if report["groups"]:
        groups = Table(title="channel groups")
        for column in ("group", "size", "prunable"):
            groups.add_column(column)
        for g in report["groups"]:
            # a grouped Conv's output: equally many channels must stay in each of its chunks
            size = str(g["size"]) if g["chunks"] <= 1 else f"{g['size']} ({g['chunks']} chunks)"
            groups.add_row(g["id"], size, "yes" if g["prunable"] else f"no: {g['reason']}")
        console.print(groups)
    if report["residual_branches"]:
        console.print(f"residual branches (removable layers): {len(report['residual_branches'])}")
    inputs = ", ".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in report["inputs"].items())
    console.print(
        f"total: {format_count(report['total_macs'])} MACs, {format_count(report['total_params'])} params"
        f" (inputs: {inputs})"
    )
    check = report["import_check"]
    if check is not None:
        console.print(
            f"import check vs onnxruntime: max abs error {check['max_abs_error']:.2e}, "
            f"max rel error {check['max_rel_error']:.2e}"
        )
    if "plan" in report:
        plan = report["plan"]
        removed = sum(plan["channels_removed"].values())
        console.print(
            f"plan: removes {removed} channels in {sum(1 for v in plan['channels_removed'].values() if v)} groups, "
            f"drops {len(plan['branches_dropped'])} residual branches; MACs "
            f"{format_count(plan['macs_before'])} -> {format_count(plan['macs_after'])}"
        )
