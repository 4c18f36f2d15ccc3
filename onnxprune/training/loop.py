"""The one training loop: a pruning method's hooks are its only variation point.

Per step: forward the torch copy of the model on a calibration batch, task loss against the
teacher's outputs (``onnxprune.calibration.losses``) plus the method's penalty, backward, the
optimizer step; the method's hooks run around each of these (see ``onnxprune.methods.base``).

Decisions that hold for every method:

* BatchNorm is frozen: its running statistics stay those of the original model (BN modules are
  in eval mode, everything else in train mode; gamma and beta still train). Small calibration
  sets give noisy batch statistics, and the teacher's outputs were produced with the stored
  statistics, so distillation matches them best (``benchmarks/magnitude_table.py --bn-train``
  measures the alternative).
* Under ``torchrun`` (``WORLD_SIZE`` > 1) the model runs in DistributedDataParallel (gloo on CPU,
  nccl on CUDA); each process takes a disjoint shard of every epoch's permutation, so
  ``--batch-size`` is per process. Gradients of method parameters outside the model (thresholds,
  gates passed through ``param_groups``) are averaged by hand. Only rank 0 shows progress; the
  caller writes files only where ``is_main_process``.
* A NaN/Inf loss on any rank raises TrainingDivergedError on all of them; nothing is written.
* A method may replace the model at the end of an epoch with a physically smaller one
  (``onnxprune.methods.base``); the loop then rebuilds its optimizer (state carried over) and
  DDP wrapper around it.
* The same seed on the same CPU gives bit-identical weights.
* Token batches are cut to their longest real sequence where the model's outputs provably do not
  change (``TrainData.trim``, :mod:`onnxprune.training.seq_trim`): fewer padded positions per step.
  Such batches are then also grouped by length (``TrainConfig.group_by_length``, on by default).
* Without a learning rate (``lr=None``, the CLI's default) the weights' rate is probed on the
  unpruned model before the method sets up (:mod:`onnxprune.training.lr_probe`): the largest
  rate of a short grid whose few steps leave the distillation loss near its start. The chosen
  rate and the probe's losses are in ``ctx.lr_probe`` (the run report's ``training.lr_probe``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from onnxprune.errors import OnnxPruneError, TrainingDivergedError
from onnxprune.graph.macs import PRUNABLE_OPS  # the one list (also reporting, dead-structure pass)
from onnxprune.methods.base import PruningMethod, TrainContext
from onnxprune.training.seq_trim import SequenceTrim, group_by_length

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")
_STATISTICS_SAMPLES = 256  # inputs a method may use for activation statistics (ctx.calibration)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None  # None: probed (onnxprune.training.lr_probe)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    freeze_bn: bool = True  # see the module docstring; False only to measure the alternative
    # where token batches are cut (TrainData.trim): batches of similar length (training.seq_trim)
    group_by_length: bool = True


@dataclasses.dataclass(frozen=True)
class TrainData:
    """Tensors on the CPU: inputs in graph-input order, teacher outputs, optional labels."""

    inputs: Sequence[torch.Tensor]
    targets: Sequence[torch.Tensor]
    labels: torch.Tensor | None = None
    # cuts a batch's inputs to its longest real sequence where that is exact (training.seq_trim)
    trim: SequenceTrim | None = None

    def __len__(self) -> int:
        return len(self.inputs[0])


@dataclasses.dataclass(frozen=True)
class Replica:
    """Where this process runs: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise OnnxPruneError(f"--device {name!r}: expected one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise OnnxPruneError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[Replica]:
    """Join the torchrun process group when launched by torchrun; a single replica otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device)
    if world <= 1:
        yield Replica(0, 1, resolved)
        return
    owned = not dist.is_initialized()
    if owned:
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    try:
        yield Replica(dist.get_rank(), dist.get_world_size(), resolved)
    finally:
        if owned:
            dist.destroy_process_group()


def prunable_weights(imported) -> dict[str, torch.nn.Parameter]:
    """Weights of Conv/ConvTranspose/Gemm/MatMul by ONNX initializer name (the torch parameters)."""
    weights: dict[str, torch.nn.Parameter] = {}
    for node in imported.onnx_model.graph.node:
        if node.op_type not in PRUNABLE_OPS:
            continue
        candidates = node.input[1:2] if node.op_type != "MatMul" else node.input[:2]
        for name in candidates:
            ref = imported.params.get(name)
            if ref is not None:
                weights[name] = getattr(imported.module.get_submodule(ref.module_path), ref.attr)
    return weights


def train(
    method: PruningMethod,
    model: torch.nn.Module,
    weights: dict[str, torch.nn.Parameter],
    data: TrainData,
    loss_fn: Callable[..., torch.Tensor],
    config: TrainConfig,
    replica: Replica | None = None,
    imported=None,
    analysis=None,
    evaluate: Callable[[], dict[str, float]] | None = None,
) -> TrainContext:
    """Fine-tune ``model`` under ``method``; returns the context (history, metrics)."""
    replica = replica or Replica(0, 1, resolve_device(config.device))
    model.to(replica.device)
    probe = None
    if config.lr is None:
        probe = _probe(model, data, loss_fn, config, replica)
        config = dataclasses.replace(config, lr=probe.lr)
    torch.manual_seed(config.seed)
    per_rank = math.ceil(len(data) / replica.world)
    ctx = TrainContext(
        model=model, imported=imported, weights=weights, analysis=analysis, device=replica.device,
        epochs=config.epochs, steps_per_epoch=math.ceil(per_rank / config.batch_size), lr=config.lr,
        is_main_process=replica.is_main, calibration=[x[:_STATISTICS_SAMPLES] for x in data.inputs],
    )
    ctx.lr_probe = probe and probe.as_dict()
    ctx.evaluate = evaluate and _in_eval_mode(lambda: ctx.model, evaluate)
    method.setup(ctx)
    model.to(replica.device)  # setup may have added parameters
    _set_train_mode(model, config.freeze_bn)
    net = model
    if replica.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = _optimizer(config, model, method.param_groups(ctx))
    in_model = {id(p) for p in model.parameters()}
    extra = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in in_model]
    total_epochs = method.total_epochs(ctx)
    with _Progress(total_epochs * ctx.steps_per_epoch, config.quiet or not replica.is_main) as bar:
        for epoch in range(total_epochs):
            ctx.epoch, running, count = epoch, 0.0, 0
            for inputs, targets, labels in _batches(data, config, replica, epoch):
                method.before_step(ctx)
                outputs = net(*inputs)
                outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
                loss = loss_fn(outputs, targets, labels)
                penalty = method.penalty(ctx)
                if penalty is not None:
                    loss = loss + penalty
                value = _global_mean(loss.detach(), replica)
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"loss became {value} at epoch {epoch + 1}, step {ctx.step}; nothing was "
                        f"written (try a lower --lr than {config.lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                _average_grads(extra, replica)
                method.after_backward(ctx)
                optimizer.step()
                method.after_step(ctx)
                ctx.step += 1
                running, count = running + value, count + 1
                bar.advance(epoch, total_epochs, {"loss": running / count, **ctx.metrics})
            ctx.metrics["loss"] = running / max(count, 1)
            if ctx.evaluate is not None:
                ctx.metrics.update(ctx.evaluate())
            method.end_epoch(ctx)
            if ctx.model is not model:  # the method rebuilt the model smaller (see methods.base)
                model, net, optimizer = _replace_model(ctx, method, config, replica, optimizer)
                in_model = {id(p) for p in model.parameters()}
                extra = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in in_model]
            ctx.history.append({"epoch": epoch + 1, **ctx.metrics})
            log.info("epoch %d/%d %s", epoch + 1, total_epochs, _fmt(ctx.metrics))
            bar.advance(epoch, total_epochs, ctx.metrics, steps=0)
            if ctx.stop:
                break
    model.eval()
    return ctx


def _probe(model: torch.nn.Module, data: TrainData, loss_fn, config: TrainConfig, replica: Replica):
    """The weights' learning rate from :func:`lr_probe.probe_lr`; every rank uses rank 0's."""
    from onnxprune.training.lr_probe import probe_lr

    result = probe_lr(model, data.inputs, data.targets, loss_fn,
                      lambda m, lr: _optimizer(dataclasses.replace(config, lr=lr), m, []),
                      lambda m: _set_train_mode(m, config.freeze_bn), config.batch_size, config.seed,
                      replica.device)
    if replica.world > 1:  # CUDA sums may differ across ranks at a borderline rate
        chosen = torch.tensor([result.lr], dtype=torch.float64, device=replica.device)
        dist.broadcast(chosen, 0)
        result.lr = float(chosen)
    if replica.is_main:
        log.info("%s", result.summary())
    return result


def _batches(data: TrainData, config: TrainConfig, replica: Replica, epoch: int):
    """This rank's shard of a seeded per-epoch permutation, padded so every rank steps equally."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=generator)
    if data.trim is not None and config.group_by_length:  # every rank regroups alike: same seed
        order = group_by_length(order, data.trim.lengths(data.inputs), config.batch_size * replica.world, generator)
    per_rank = math.ceil(len(data) / replica.world)
    order = torch.cat([order, order[: per_rank * replica.world - len(order)]])[replica.rank::replica.world]
    device = replica.device
    for start in range(0, len(order), config.batch_size):
        index = order[start:start + config.batch_size]
        inputs = [x[index] for x in data.inputs]
        if data.trim is not None:
            inputs = data.trim(inputs)
        yield ([x.to(device) for x in inputs], [t[index].to(device) for t in data.targets],
               None if data.labels is None else data.labels[index].to(device))


def _optimizer(config: TrainConfig, model: torch.nn.Module, extra_groups: list[dict]) -> torch.optim.Optimizer:
    claimed = {id(p) for group in extra_groups for p in group["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    groups = [{"params": params}, *extra_groups]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    raise OnnxPruneError(f"--optimizer {config.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")


def _replace_model(ctx: TrainContext, method: PruningMethod, config: TrainConfig, replica: Replica,
                   old: torch.optim.Optimizer):
    """Train ``ctx.model`` from now on: a fresh optimizer (and DDP wrapper) whose per-parameter
    state (Adam moments, momentum) is carried over through ``ctx.state_map``."""
    model = ctx.model.to(replica.device)
    _set_train_mode(model, config.freeze_bn)
    net = model
    if replica.world > 1:  # every rank replaces its model at the same step (same hooks, same seed)
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = _optimizer(config, model, method.param_groups(ctx))
    for new, (prev, select) in ctx.state_map.items():
        state = old.state.get(prev)
        if state:
            optimizer.state[new] = {k: select(v) if torch.is_tensor(v) and v.shape == prev.shape else v
                                    for k, v in state.items()}
    ctx.state_map = {}
    return model, net, optimizer


def _set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    model.train()
    for module in model.modules():
        if freeze_bn and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()  # frozen statistics, see the module docstring


def _in_eval_mode(current: Callable[[], torch.nn.Module], evaluate: Callable[[], dict[str, float]]):
    def run() -> dict[str, float]:
        model = current()  # the model being trained now (a method may have replaced it)
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                return evaluate()
        finally:
            for module, mode in modes.items():
                module.train(mode)
    return run


def _global_mean(value: torch.Tensor, replica: Replica) -> float:
    if replica.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= replica.world
    return float(value)


def _average_grads(params: list[torch.Tensor], replica: Replica) -> None:
    if replica.world <= 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= replica.world


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


# metric -> label in the progress bar (the run report keeps every metric under its full name)
_SHOWN = {"loss": "loss", "top1_agreement": "agree", "accuracy": "acc", "sparsity": "sparsity"}


class _Progress:
    """A rich progress bar with ETA and the running metrics; silent when disabled."""

    def __init__(self, total: int, disabled: bool) -> None:
        self.total, self.disabled, self.progress = total, disabled, None

    def __enter__(self) -> _Progress:
        if not self.disabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                                     console=Console(stderr=True))
            self.progress.start()
            self.task = self.progress.add_task("training", total=self.total, metrics="")
        return self

    def advance(self, epoch: int, epochs: int, metrics: dict[str, float], steps: int = 1) -> None:
        if self.progress is not None:
            shown = {short: metrics[k] for k, short in _SHOWN.items() if k in metrics}
            self.progress.update(self.task, advance=steps, description=f"epoch {epoch + 1}/{epochs}",
                                 metrics=_fmt(shown))

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
