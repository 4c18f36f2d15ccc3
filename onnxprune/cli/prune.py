"""``onnxprune IN.onnx --method M --calib data.npz --out OUT.onnx``: the prune run.

The command only parses options; :mod:`onnxprune.run.pipeline` does the work. The ``--method``
choices and each method's own options come from the method registry: every method's
``options`` are merged into this command (an option several methods read must be declared
identically), and an option belonging to another method than the chosen one is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import torch

from onnxprune.calibration.losses import DISTILL_LOSSES, LOSSES
from onnxprune.cli import gate_options
from onnxprune.cli.config_file import config_option, effective_config, parameter_sources
from onnxprune.cli.main import reject_non_finite
from onnxprune.cli.method_options import merged_options
from onnxprune.cli.shared_options import image_options, input_shape_option
from onnxprune.methods.base import registry
from onnxprune.reporting.run_report import summary_lines
from onnxprune.run import acceptance as gates
from onnxprune.run import gated as ci
from onnxprune.run import pipeline
from onnxprune.training.loop import DEVICES, OPTIMIZERS, TrainConfig

METHOD_OPTIONS, OPTION_READERS = merged_options(registry())
# the defaults live in the run's dataclasses (the Python API uses them too), not here
_TRAIN = TrainConfig()
_RUN = {f.name: f.default for f in dataclasses.fields(pipeline.PruneConfig) if f.default is not dataclasses.MISSING}


@click.command("prune", context_settings={"show_default": True})
@click.argument("model", metavar="IN.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--method", type=click.Choice(sorted(registry())), required=True, help="Pruning method.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output .onnx path.")
@click.option("--calib", default=None, metavar="DATA",
              help="Calibration data: .npz keyed by input name (optional 'labels'), .npy, a directory "
                   "of them, a folder of images (class sub-folders give labels), or 'synthetic' "
                   "(random inputs, smoke tests only). Required.")
@image_options
@click.option("--labels", default=None, type=click.Path(dir_okay=False), help="Integer labels .npy [N].")
@click.option("--tokenizer", default=None, type=click.Path(dir_okay=False), metavar="TOKENIZER.json",
              help="Tokenize --calib TEXT.txt (one text per line) with this tokenizers file (needs the "
                   "'tokenizers' package: pip install 'onnxprune[text]').")
@click.option("--seq-len", "seq_len", type=click.IntRange(2), default=None,
              help="Tokens per sample for text calibration (truncated and padded to it); the MACs and the "
                   "latency are measured at it.")
@input_shape_option
@click.option("--holdout", type=click.FloatRange(0.0, 1.0, max_open=True), default=_RUN["holdout"],
              help="Fraction of the calibration data held out for evaluation (never trained on).")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help="Task loss [default: kd+ce with labels, else kd].")
@click.option("--temperature", type=click.FloatRange(0.0, min_open=True), default=_RUN["temperature"],
              help="Distillation temperature for logit outputs.")
@click.option("--distill-loss", "distill_loss", type=click.Choice(DISTILL_LOSSES), default=_RUN["distill_loss"],
              help="Distillation term: auto (KL for logits, cosine for pooled embeddings, MSE otherwise), or kl, "
                   "mse, cosine for every logits/embedding output.")
@click.option("--epochs", type=click.IntRange(1), default=_TRAIN.epochs)
@click.option("--batch-size", type=click.IntRange(1), default=_TRAIN.batch_size, help="Per process under torchrun.")
@click.option("--lr", type=click.FloatRange(0.0, min_open=True), default=None,
              help="Weights' learning rate [default: probed: the largest of 1e-3, 3e-4, 1e-4, 3e-5, 1e-5 whose first "
                   "10 steps leave the unpruned model's distillation loss near its start; see the report].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_TRAIN.optimizer)
@click.option("--weight-decay", type=click.FloatRange(0.0), default=_TRAIN.weight_decay)
@click.option("--seed", type=int, default=_TRAIN.seed, help="Seeds the holdout split, shuffling and the method.")
@click.option("--device", type=click.Choice(DEVICES), default=_TRAIN.device, help="auto: CUDA when available.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch CPU threads for training [default: torch's own, the CPU count]. The same seed gives "
                   "the same bytes at the same thread count; another count rounds sums differently.")
@click.option("--quiet", is_flag=True, help="No progress bar (CI logs).")
@click.option("--sparse-storage", is_flag=True,
              help="Store mostly-zero weights as sparse tensors: the file shrinks with sparsity "
                   "(speed is unchanged; onnxruntime densifies them on load).")
@click.option("--prune-hidden-size", is_flag=True,
              help="Transformers, structured methods: the residual stream's width is pruned too (embeddings, every "
                   "LayerNorm and residual Add, the output head); exact, each LayerNorm sees its full width "
                   "(docs/transformers.md).")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the run report: a folder (report.json, report.md, PNG plots), or one JSON file "
                   "when the name ends in .json.")
@config_option
@click.pass_context
def command(ctx: click.Context, model: Path, method: str, out: Path, calib: str | None, labels: str | None,
            tokenizer: str | None, seq_len: int | None, distill_loss: str, input_shape: tuple[str, ...], holdout: float, loss: str | None, temperature: float, epochs: int,
            batch_size: int, lr: float | None, optimizer: str, weight_decay: float, seed: int, device: str, threads: int | None,
            quiet: bool, sparse_storage: bool, prune_hidden_size: bool, report: Path | None, config: str | None, mean: list[float] | None,
            std: list[float] | None, channel_order: str, layout: str, **method_values) -> None:
    """Prune IN.onnx with a training-based method and write a smaller OUT.onnx."""
    reject_non_finite(ctx)  # nan / inf in any float option
    if threads is not None:  # before any torch work; recorded in the report and the model's metadata
        previous = torch.get_num_threads()
        ctx.call_on_close(lambda: torch.set_num_threads(previous))
        torch.set_num_threads(threads)
    ci_options = ci.CiOptions.pop_from(method_values)  # before the method-option checks below
    sources = parameter_sources(ctx)
    for name, value in method_values.items():
        if method not in OPTION_READERS[name] and sources.get(name) != "default":
            raise click.UsageError(f"--{name.replace('_', '-')} does not apply to --method {method} "
                                   f"(it is read by: {', '.join(sorted(OPTION_READERS[name]))})")
    own = {name: value for name, value in method_values.items() if method in OPTION_READERS[name]}
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        weight_decay=weight_decay, seed=seed, device=device, quiet=quiet)
    result, gate_results = ci.run(pipeline.with_data_shapes(pipeline.PruneConfig(
        model=model, out=out, method=method, method_options=own, calib=calib, labels=labels,
        tokenizer=tokenizer, seq_len=seq_len, distill_loss=distill_loss,
        image_options={"mean": 0.0 if mean is None else mean, "std": 1.0 if std is None else std,
                       "channel_order": channel_order, "layout": layout},
        input_shapes=input_shape, holdout=holdout, loss=loss, temperature=temperature, train=train,
        report=report, sparse_storage=sparse_storage, prune_hidden_size=prune_hidden_size,
        options=effective_config(ctx), option_sources=sources)), ci_options)
    if result.replica.is_main:
        for line in summary_lines(result.report) + ci.summary_lines(result.report, gate_results):
            click.echo(line)
        click.echo(f"wrote       {result.written}" + ("" if result.report["status"] == "accepted" else " (REJECTED)"))
    gates.enforce(gate_results)  # a missed gate: exit code 3, after the report and the summary


command.params.extend(METHOD_OPTIONS)
command.params.extend(gate_options.OPTIONS)
