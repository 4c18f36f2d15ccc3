"""One prune run, end to end:

    load -> calibration (validate, holdout split, teacher targets by onnxruntime)
         -> import to torch -> train under the method -> write trained weights back by name
         -> apply the method's plan (graph passes) -> verify -> evaluate on the holdout

:func:`run` writes nothing: it returns the verified model and its report, and
:func:`onnxprune.run.gated.finish` is the one place that writes the model (with its metadata,
sparse storage on request), the report and the trail. The original model is only read.
Verification: ``onnx.checker`` (full check) on the result, and onnxruntime on the result against
the trained torch model on the holdout (atol 1e-5, rtol 1e-4); a miss is a VerificationError.
Under torchrun every process trains; only rank 0 verifies and evaluates.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from onnxprune.calibration import (
    CalibrationSet,
    TaskLoss,
    fidelity,
    load_calibration,
    output_kinds,
    split_holdout,
    teacher_outputs,
)
from onnxprune.calibration.data import check_labels
from onnxprune.errors import OnnxPruneError, VerificationError
from onnxprune.graph.batching import (
    fixed_batch,
    free_batch_constants,
    pad_to_multiple,
    restore_batch_constants,
    run_in_slices,
    torch_batch_check,
    torch_in_slices,
)
from onnxprune.graph.macs import count_macs, count_params
from onnxprune.graph.modelio import is_large_model, load_model, weightless_header
from onnxprune.graph.runtime_checks import check_runtime_opset
from onnxprune.graph.sessions import make_session
from onnxprune.graph.shapes import parse_input_shapes, resolve_input_shapes
from onnxprune.graph.verify import assert_close
from onnxprune.importing.importer import float64_forward, import_model, release_weights
from onnxprune.importing.writeback import write_back
from onnxprune.methods._support.chunks import round_plan_for
from onnxprune.methods.base import PruningMethod, registry
from onnxprune.passes import apply_plan
from onnxprune.passes.groups import analyze, skeleton_model
from onnxprune.reporting.run_report import add_layers, build_run_report, nonzero_weights
from onnxprune.run.plan_check import check_plan_shapes, is_structured
from onnxprune.training.loop import Replica, TrainConfig, TrainData, distributed, prunable_weights, train
from onnxprune.training.seq_trim import outputs_by_length, sequence_trim

log = logging.getLogger(__name__)

_VERIFY_SAMPLES = 256


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    model: Path
    out: Path | None  # where finish() writes the model; the pipeline itself writes nothing
    method: str
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    calib: str | None = None
    labels: str | None = None
    image_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # --mean/--std/... for image folders
    tokenizer: str | None = None  # --tokenizer tokenizer.json for text calibration (--calib sentences.txt)
    seq_len: int | None = None  # --seq-len: tokens per sample; the MACs and latency are measured at it
    distill_loss: str = "auto"  # --distill-loss: the distillation term per output kind (calibration.losses)
    input_shapes: tuple[str, ...] = ()
    holdout: float = 0.1
    loss: str | None = None
    temperature: float = 2.0
    train: TrainConfig = TrainConfig()
    report: Path | None = None  # where finish() writes the report
    sparse_storage: bool = False  # finish() stores mostly-zero weights sparsely in the written file
    prune_hidden_size: bool = False  # transformers: the residual stream's width is a group too (docs/transformers.md)
    # the command line's effective options and where each came from, recorded in the report so
    # the run can be repeated with --config
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    option_sources: dict[str, str] = dataclasses.field(default_factory=dict)
    # where the method writes what it writes during training (``{"trail": staged folder}``): the
    # run's outputs are staged and renamed into place at the end (onnxprune.run.outputs); the
    # report and the metadata keep the paths of ``method_options``
    staging: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunResult:
    model: onnx.ModelProto  # the pruned, verified model
    imported: Any  # the trained torch side (ImportedModel)
    plan: Any
    report: dict[str, Any]
    written: Path | None  # set by finish(): None on ranks other than 0, or without an output path
    replica: Replica
    original: onnx.ModelProto | None = None  # the input as loaded (read once per run)


def make_method(name: str, options: dict[str, Any]) -> PruningMethod:
    methods = registry()
    if name not in methods:
        raise OnnxPruneError(f"--method {name!r}: unknown; available: {', '.join(sorted(methods))}")
    return methods[name](**options)


def run(config: PruneConfig, original: onnx.ModelProto | None = None) -> RunResult:
    """Prune ``config.model`` (or ``original``, that file as already loaded); see the module
    docstring. Writes nothing. Raises OnnxPruneError on user errors."""
    config = with_data_shapes(config, original)
    with distributed(config.train.device) as replica:
        return _run(config, replica, original)


def with_data_shapes(config: PruneConfig, original: onnx.ModelProto | None = None) -> PruneConfig:
    """``config`` with an ``--input-shape`` for every input whose dynamic non-batch dims the
    calibration data fixes (the token inputs at ``--seq-len``, or an ``.npz``'s sample shape), so
    every shape consumer (import, MACs, groups, latency feeds) sees the calibration's sequence
    length. Inputs already given are kept; without such inputs ``config`` is returned as is."""
    from onnxprune.calibration.data import data_input_shapes

    overrides = parse_input_shapes(config.input_shapes)
    if original is None:
        try:  # the graph's inputs only: the weights stay on disk
            original = onnx.load(str(config.model), load_external_data=False)
        except Exception:  # noqa: BLE001 -- load_model names a missing or bad file in the run
            return config
    shapes = data_input_shapes(config.calib, original, overrides, config.seq_len)
    added = {name: shape for name, shape in shapes.items() if name not in overrides}
    if not added:
        return config
    extra = tuple(f"{name}={'x'.join(map(str, shape))}" for name, shape in added.items())
    log.info("input shapes from the calibration data: %s", ", ".join(extra))
    return dataclasses.replace(config, input_shapes=(*config.input_shapes, *extra))


@dataclasses.dataclass(frozen=True)
class _Calibration:
    train: CalibrationSet
    eval: CalibrationSet  # the holdout, or the training set when --holdout 0
    train_targets: list[np.ndarray]
    eval_targets: list[np.ndarray]
    kinds: list[str]
    loss: TaskLoss
    held_out: int


def _run(config: PruneConfig, replica: Replica, original: onnx.ModelProto | None) -> RunResult:
    started = time.perf_counter()
    method = make_method(config.method, {**config.method_options, **config.staging})
    owned = original is None  # read here: released once the teacher and the figures need it no more
    original = load_model(config.model) if original is None else original
    check_runtime_opset(original, config.model)  # the teacher and the checks run on onnxruntime
    overrides = parse_input_shapes(config.input_shapes)
    shapes = resolve_input_shapes(original, overrides)
    if config.calib is None:  # refuse before any work
        load_calibration(None, original)
    imported = import_model(original, shapes)  # model errors (unsupported ops) before data errors
    large = is_large_model(original)  # over 64 MiB of weights: copies freed as soon as they are dead
    batch, torch_batch, imported, freed = _fixed_batches(original, imported, shapes)
    before, nonzero_before = count_macs(original, shapes), nonzero_weights(original)
    teacher = None
    if owned and large:  # the loaded model, another copy of every weight, is not needed from here
        # on: the data checks read its header, the teacher runs from its file (no serialized copy
        # either), RunResult.original is None (the latency reads config.model)
        original, teacher = weightless_header(original), config.model
        _release(large)
    calib = _calibrate(config, original, overrides, replica, batch or 1, teacher=teacher)
    if teacher is not None:
        original = None
    _release(large)  # the teacher's session (reference cycles keep its model alive otherwise)
    weights = prunable_weights(imported)
    if not weights:
        raise OnnxPruneError(f"{config.model}: no prunable weights (Conv/ConvTranspose/Gemm/MatMul initializers)")

    def evaluate() -> dict[str, float]:
        if data.trim is not None:  # `data` as trained (set below): holdout chunks cut like its batches
            student = outputs_by_length(imported.module, calib.eval.inputs.values(), data.trim, replica.device)
        else:
            student = torch_outputs(imported.module, calib.eval.inputs.values(), replica.device, fixed=torch_batch)
        return fidelity(student, calib.eval_targets, calib.kinds, calib.eval.labels)

    tensors = lambda arrays: [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]  # noqa: E731
    labels = calib.train.labels
    data = TrainData(tensors(calib.train.inputs.values()), tensors(calib.train_targets),
                     None if labels is None else torch.from_numpy(labels))
    train_config = config.train
    if torch_batch is not None:  # the torch copy runs only at the fixed batch: whole batches of it
        *columns, label_column = pad_to_multiple([*data.inputs, *data.targets, data.labels], torch_batch * replica.world)
        data = TrainData(columns[:len(data.inputs)], columns[len(data.inputs):], label_column)
        train_config = dataclasses.replace(config.train, batch_size=torch_batch)
    else:  # token batches cut to their longest real sequence, where exact (training.seq_trim)
        data = dataclasses.replace(data, trim=sequence_trim(imported.onnx_model, imported.module, data.inputs))
    analysis = _analysis(method, imported.onnx_model, shapes, config.prune_hidden_size)
    if analysis is not None and is_structured(method):  # a plan shape the passes cannot apply: refused now
        check_plan_shapes(config.method, imported.onnx_model, analysis, shapes)
    if large and analysis is None:  # weight-level: nothing reads the normalized model's weights
        release_weights(imported)  # from here on but the write-back, which takes them from torch
        _release(large)
    ctx = train(method, imported.module, weights, data, calib.loss, train_config, replica, imported=imported,
                analysis=analysis, evaluate=evaluate)
    plan = method.finalize(ctx)
    for parameter in imported.module.parameters():  # gradients: another copy of every weight
        parameter.grad = None
    _release(large)
    if analysis is not None:  # grouped Convs: equally many kept per conv group (rounded up, exact)
        plan = round_plan_for(plan, analysis)
    if config.prune_hidden_size:  # the passes analyze the model again: with the same choice
        plan = dataclasses.replace(plan, meta={**plan.meta, "hidden_size": True})
    imported.module.eval().cpu()  # verified on the CPU: CUDA's TF32 convolutions miss atol 1e-5
    pruned = apply_plan(write_back(imported), plan, shapes)
    if freed:  # the Reshape targets trained as "copy the batch" read the fixed batch again
        pruned = restore_batch_constants(pruned, freed, batch)
    _release(large)  # the written-back model the passes read
    result = RunResult(pruned, imported, plan, {}, None, replica, original)
    if not replica.is_main:
        return result
    session = verify(pruned, imported.module, calib.eval, fixed=torch_batch)
    final = fidelity(run_batched(session, calib.eval.inputs), calib.eval_targets, calib.kinds, calib.eval.labels)
    del session  # onnxruntime's copy of the pruned weights
    _release(large)
    after = count_macs(pruned, shapes)
    result.report = build_run_report(
        config=config, method=method, plan=plan, before=before, after=after,
        nonzero_before=nonzero_before, nonzero_after=nonzero_weights(pruned),
        untied_params=count_params(imported.onnx_model) - before.total_params,
        # in full, defaults included; paths as the user gave them (the trail is staged meanwhile)
        method_options={**method.options.to_dict(), **config.method_options},
        final=final,
        baseline=fidelity(calib.eval_targets, calib.eval_targets, calib.kinds, calib.eval.labels),
        history=ctx.history, seconds=time.perf_counter() - started,
        samples={"train": len(calib.train), "holdout": calib.held_out, "has_labels": labels is not None,
                 "synthetic": calib.train.synthetic, "loss": calib.loss.mode,
                 "output_kinds": calib.kinds, "distill_terms": calib.loss.terms,
                 "fixed_batch": batch, "torch_batch": torch_batch, "batch_free_reshapes": freed},
        device=str(replica.device), world_size=replica.world,
    )
    add_layers(result.report, pruned, before, after)
    # the same seed gives the same bytes at the same torch thread count; another count rounds
    # float sums in another order (docs/errors.md, "Determinism"), so the count is recorded
    result.report["training"]["torch_threads"] = torch.get_num_threads()
    result.report["training"]["lr"] = ctx.lr  # the rate used (probed when no --lr was given)
    if ctx.lr_probe is not None:
        result.report["training"]["lr_probe"] = ctx.lr_probe
    return result


def _calibrate(config: PruneConfig, original: onnx.ModelProto, overrides, replica: Replica,
               batch: int = 1, teacher=None) -> _Calibration:
    """Load and validate the data, split the holdout, compute the teacher's targets once
    (onnxruntime on ``teacher``, the original's file, when given; else on ``original``)."""
    data = load_calibration(config.calib, original, overrides, config.labels, seed=config.train.seed,
                            image_options=config.image_options, tokenizer=config.tokenizer, seq_len=config.seq_len)
    train_set, holdout = split_holdout(data, config.holdout, config.train.seed, multiple=batch)
    providers = None
    if replica.device.type == "cuda":  # each process's teacher on its own GPU
        providers = [("CUDAExecutionProvider", {"device_id": replica.device.index or 0}), "CPUExecutionProvider"]
    teacher = original if teacher is None else teacher
    train_targets = teacher_outputs(teacher, train_set, providers=providers)
    eval_set, eval_targets = train_set, train_targets
    if holdout is not None:
        eval_set, eval_targets = holdout, teacher_outputs(teacher, holdout, providers=providers)
    kinds = output_kinds(train_targets, original)
    check_labels(data.labels, train_targets, kinds)  # class ids within the logits, before training
    loss = TaskLoss(kinds, config.loss, data.labels is not None, config.temperature, config.distill_loss)
    log.info("outputs %s: distillation terms %s", kinds, loss.terms)
    return _Calibration(train_set, eval_set, train_targets, eval_targets, kinds, loss,
                        0 if holdout is None else len(holdout))


def _fixed_batches(original: onnx.ModelProto, imported, shapes):
    """(the model's fixed batch or None, the batch the torch copy must train at or None, the
    import to train, the Reshape targets rewritten for training); see docs/fixed-batch.md.

    A fixed batch B means B samples per onnxruntime call. The torch copy trains on mini-batches
    of --batch-size when it runs 2B samples at once as onnxruntime runs them B at a time. When a
    Reshape target bakes B in, the import is redone with those targets reading 0 ("copy the
    batch") and checked again; when that does not pass either (an Expand to B, say), it trains
    and evaluates at B."""
    batch = fixed_batch(original)
    if batch is None:
        return None, None, imported, []
    ok, why = torch_batch_check(imported, batch)
    if ok:
        log.info("fixed batch %d: %s, so it trains on mini-batches", batch, why)
        return batch, None, imported, []
    freed_model, freed = free_batch_constants(imported.onnx_model, batch, imported.input_shapes)
    if freed:
        try:
            candidate = import_model(freed_model, shapes)
            ok, why_freed = torch_batch_check(candidate, batch)
        except OnnxPruneError as exc:
            ok, why_freed = False, str(exc)
        if ok:
            log.info("fixed batch %d: Reshape targets %s bake it in; trained with them reading 0 (copy the batch): "
                     "%s", batch, freed, why_freed)
            return batch, None, candidate, freed
        why = f"{why}; with Reshape targets {freed} batch-free: {why_freed}"
    log.warning("fixed batch %d: %s; it trains at batch %d (--batch-size is not used)", batch, why, batch)
    return batch, batch, imported, []


def torch_outputs(module: torch.nn.Module, inputs, device: torch.device, batch: int = 512,
                  fixed: int | None = None) -> list[np.ndarray]:
    """The module's outputs as numpy, in graph-output order, evaluated in chunks (of exactly
    ``fixed`` samples for a module that runs only at its fixed batch)."""
    return torch_in_slices(module, list(inputs), device, batch, fixed)


def run_batched(model: onnx.ModelProto, inputs: dict[str, np.ndarray], batch: int = 512) -> list[np.ndarray]:
    """onnxruntime over every sample, in chunks of ``batch`` or of the model's fixed batch."""
    return run_in_slices(model, inputs, chunk=batch)


def verify(model: onnx.ModelProto, module: torch.nn.Module, data: CalibrationSet, fixed: int | None = None,
           session=None):
    """Checker (full) and onnxruntime vs the trained torch model, atol 1e-5 / rtol 1e-4.

    Returns the onnxruntime session it ran (``session``, or one made after the checker passed),
    for the caller's further runs of the same model."""
    try:
        check_full(model)
    except onnx.checker.ValidationError as exc:
        raise VerificationError(f"the pruned model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    session = make_session(model) if session is None else session
    sample = {k: v[:_VERIFY_SAMPLES] for k, v in data.inputs.items()}
    expected = torch_outputs(module, sample.values(), torch.device("cpu"), fixed=fixed)
    actual = run_batched(session, sample)
    what = "pruned model (onnxruntime) vs trained torch model"
    try:
        assert_close(expected, actual, what=what)
    except VerificationError:
        # Training can scale outputs up (logits of 100+), where two correct float32 programs
        # differ by more than atol 1e-5. Accept only differences within 4x the torch model's
        # own float32 rounding (|float32 - float64|), the rule the import check uses too.
        noise = _float32_noise(module, sample, expected, fixed)
        if noise is None or any(np.abs(e - a).max() > 4 * n for e, a, n in zip(expected, actual, noise)):
            raise
        log.warning("pruned model matches within 4x float32 noise (%s), not atol 1e-5", noise)
    return session


def check_full(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model(model, full_check=True)``; a model over 64 MiB of weights is
    checked as its skeleton (large float weights as typed graph inputs, as the passes check it):
    the checker serializes its argument, two more copies of every weight. What the skeleton does
    not check, each weight's data against its dims, the onnxruntime session checks on loading."""
    if is_large_model(model):
        skeleton, _ = skeleton_model(model)
        onnx.checker.check_model(skeleton, full_check=True)
    else:
        onnx.checker.check_model(model, full_check=True)


def _release(large: bool) -> None:
    """Collect reference cycles now on a large model: the copies of its weights that died with
    a stage (a session, a written-back model) are freed at once, not at the next automatic
    collection, which counts objects, not bytes."""
    if large:
        gc.collect()


def _float32_noise(module: torch.nn.Module, sample: dict[str, np.ndarray],
                   float32: list[np.ndarray], fixed: int | None = None) -> list[float] | None:
    """Per output, max |module(x) in float32 - the same module in float64|; None if it cannot run.

    The float64 run is ``copy.deepcopy(module).double()`` on the sample cast to float64, computed
    layer by layer (``importer.float64_forward``): the same values without a float64 copy of
    every weight."""
    try:  # float64 one layer at a time: a float64 copy of the whole module is 2x its size
        float64 = torch_outputs(float64_forward(module), [v.astype(np.float64) if v.dtype == np.float32 else v
                                       for v in sample.values()], torch.device("cpu"), fixed=fixed)
    except Exception:  # noqa: BLE001 -- no estimate: the strict rule stands
        return None
    return [float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(float32, float64)]


def _analysis(method: PruningMethod, model: onnx.ModelProto, shapes, hidden_size: bool = False):
    """Channel groups for structured methods; weight-level methods do not need them."""
    if set(method.granularities) <= {"weight"}:
        if hidden_size:
            raise OnnxPruneError(f"--prune-hidden-size needs a structured method; --method {method.name} prunes weights")
        return None
    return analyze(model, shapes, hidden_size=hidden_size)
