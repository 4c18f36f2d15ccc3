"""Command-line entry point.

``onnxprune IN.onnx --method M --out OUT.onnx`` runs the pruning pipeline (the ``prune``
command, also reachable by name); ``inspect``, ``apply`` and ``bench`` are subcommands. Each
command lives in its own module under ``onnxprune.commands``. User errors
(:class:`onnxprune.errors.OnnxPruneError`) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import re
import signal
import sys
import threading

import click

from onnxprune import __version__
from onnxprune.errors import Interrupted, OnnxPruneError

# name -> module defining a click command called `command`; imported only when used, so
# `onnxprune --help` stays fast and one broken command cannot take down the others.
_COMMANDS = {
    "prune": "onnxprune.cli.prune",
    "inspect": "onnxprune.cli.inspect",
    "apply": "onnxprune.cli.apply",
    "bench": "onnxprune.cli.bench",
    "profile": "onnxprune.cli.profile",
}
# each command's one-line summary, so that `onnxprune --help` lists the commands without
# importing them: prune's module imports torch, which a target-device install does not have
# (docs/target-install.md). tests/measure/test_torch_free.py checks these match the commands' own.
_SUMMARIES = {
    "prune": "Prune IN.onnx with a training-based method and write a smaller OUT.onnx.",
    "inspect": "Per-layer MACs, params and prunability of MODEL.onnx.",
    "apply": "Physically remove what a pruning plan names (and all-zero channels) from IN.onnx.",
    "bench": "Measure ONNX models side by side on onnxruntime; speedups are relative to the first.",
    "profile": "Time each prunable layer of MODEL over a grid of kept widths; write a latency table.",
}
# what a target-device install leaves out; a command that needs one says so in one line
_OPTIONAL_ON_TARGET = ("torch", "torchvision", "onnx2torch", "matplotlib", "onnx_ir")
_DEFAULT_COMMAND = "prune"
_GROUP_FLAG = re.compile(r"-v+|--verbose")  # the group's options that may precede the implicit `prune`


class _Cli(click.Group):
    """A group whose first argument may be a model path, meaning the default `prune` command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        # found, not imported (a command not written yet is left out)
        return [name for name in _COMMANDS if importlib.util.find_spec(_COMMANDS[name]) is not None]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, click.utils.make_default_short_help(_SUMMARIES.get(name, ""), limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module_name = _COMMANDS.get(name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not written yet
                return None
            missing = (exc.name or "").split(".")[0]
            if missing and not missing.startswith("onnxprune"):  # a torch-free install, say
                raise OnnxPruneError(
                    f"'{name}' needs {missing}, which is not installed here; this install runs only the "
                    f"commands whose dependencies it has (docs/target-install.md)") from None
            raise
        return module.command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `onnxprune model.onnx --method x` (or `onnxprune --config prune.toml`): route to
        # `prune` before click reads the options as the group's own. The group's own options
        # (-v, -vv, --verbose) may come first: `onnxprune -v model.onnx ...`.
        first = 0
        while first < len(args) and _GROUP_FLAG.fullmatch(args[first]):
            first += 1
        rest = args[first:]
        if rest and rest[0] not in _COMMANDS and (not rest[0].startswith("-") or rest[0].startswith("--config")):
            args = [*args[:first], _DEFAULT_COMMAND, *rest]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # before click turns it into Abort (and prints a blank line)
            raise _interrupted() from None


# SIGTERM (a CI job cancelled, `kill`) is handled as Ctrl-C is: the run's outputs are removed,
# one line, exit 143 (128 + 15) instead of 130
_TERMINATED: list[int] = []


def _on_sigterm(signum, frame) -> None:
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


def _interrupted() -> Interrupted:
    if _TERMINATED:
        exc = Interrupted("terminated (SIGTERM); nothing of this run was written")
        exc.exit_code = 128 + signal.SIGTERM
        return exc
    return Interrupted("interrupted (Ctrl-C); nothing of this run was written")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    install = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if install:
        signal.signal(signal.SIGTERM, _on_sigterm)
    _TERMINATED.clear()
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Prune an ONNX model with a training-based method and write a smaller ONNX model.

    \b
    onnxprune IN.onnx --method lc --sparsity 0.9 --calib data.npz --out OUT.onnx
    onnxprune inspect IN.onnx
    onnxprune apply IN.onnx --plan plan.json --out OUT.onnx
    onnxprune bench A.onnx B.onnx
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return their exit code (no traceback)."""
    try:
        with _sigterm_as_interrupt():
            cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
    except OnnxPruneError as exc:
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        exc = _interrupted()
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # `onnxprune` alone: the help
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return exc.exit_code
    except click.UsageError as exc:  # one line and a hint, not click's usage block
        where = exc.ctx.command_path if exc.ctx is not None else "onnxprune"
        click.echo(f"error: {_one_line(exc.format_message()).rstrip('.')} (see '{where} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ModuleNotFoundError as exc:  # a torch-free install running more than bench
        missing = (exc.name or "").split(".")[0]
        if missing not in _OPTIONAL_ON_TARGET:
            raise
        click.echo(f"error: this needs {missing}, which is not installed here; a target-device install "
                   "runs bench only (docs/target-install.md)", err=True)
        return OnnxPruneError.exit_code
    return 0


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip()) or "failed"


def reject_non_finite(ctx: click.Context) -> None:
    """A usage error for any float option given as nan or inf (click's FloatRange lets nan
    through: every comparison with it is false)."""
    import math

    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise click.BadParameter(f"{item} is not a finite number", ctx=ctx, param=param)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
