"""Options several commands share, declared once: --input-shape (every command) and the image-folder
options (prune and bench)."""

from __future__ import annotations

import click

from onnxprune.calibration.images import CHANNEL_ORDERS, LAYOUTS


def _floats(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers, e.g. 0.485,0.456,0.406") \
            from None


def image_options(func):
    """Decorator adding the image-folder options (--mean, --std, --channel-order, --layout)."""
    options = [
        click.option("--mean", callback=_floats, default=None,
                     help="Per-channel mean in [0,1] units, e.g. 0.485,0.456,0.406 [default: 0]."),
        click.option("--std", callback=_floats, default=None,
                     help="Per-channel std in [0,1] units, e.g. 0.229,0.224,0.225 [default: 1]."),
        click.option("--channel-order", type=click.Choice(CHANNEL_ORDERS), default="rgb", show_default=True,
                     help="Channel order the model expects for image folders."),
        click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
                     help="Image input layout (auto: the axis of size 1 or 3)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


input_shape_option = click.option(
    "--input-shape", "input_shape", multiple=True, metavar="NAME=DxDxD",
    help="Static shape for an input with dynamic dims (repeatable), e.g. image=1x3x224x224.")
