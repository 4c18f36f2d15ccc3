"""Training batches of token inputs cut to their longest real sequence.

Text calibration pads every sample to ``--seq-len`` T, but sentences are often much shorter
(fortune sentences: about 20 real tokens of 64 or 128). In an encoder that reads an attention
mask, a padding position j contributes nothing to a real position i: its attention logit gets
the mask's large negative bias, so ``softmax`` gives it weight exactly 0 in float32, and masked
mean pooling sums ``h_j * m_j = 0`` for it. Padding positions never feed real ones (attention
mixes positions only through those weights; every other op is per position), so dropping the
columns ``j >= L`` of a batch, with ``L = 1 + max{j : m_nj = 1 for some n}``, leaves every output
that does not itself carry the sequence axis unchanged, and a step costs about L/T of one at T.

That argument needs the model to honour its mask, so it is not assumed; :func:`sequence_trim`
trims only when

* an input is an attention mask (``onnxprune.calibration.text.token_role``) and every input cut
  with it is ``[N, T]`` with its sequence axis dynamic in the ONNX graph, and
* the torch copy gives, on up to 32 calibration samples, the same outputs (same shapes, within
  atol 1e-5 / rtol 1e-4) on the trimmed batch as on the padded one. A token-level output
  ``[N, T, D]`` changes shape, so such a model is not trimmed (its targets are ``[N, T, D]``).

The MAC count, the latency and the verification stay at T: only the training steps see L.

Cutting alone gains little on random batches: a batch's longest sentence is far above the mean
(fortunes at T = 64: 20 real tokens on average, 49 for the longest of 32). So where batches are cut,
:func:`group_by_length` also orders each epoch's permutation by length within windows of
``window`` batches and then shuffles the batches (HuggingFace's ``group_by_length``): every
sample is still seen once per epoch, in batches of similar length. This one is a choice, not an
identity (it changes which samples share a batch); ``TrainConfig.group_by_length`` turns it off.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import onnx
import torch

log = logging.getLogger(__name__)

_CHECK_SAMPLES = 32
_ATOL, _RTOL = 1e-5, 1e-4


@dataclasses.dataclass(frozen=True)
class SequenceTrim:
    """Cut the inputs at ``columns`` (positions in graph-input order) to the batch's longest
    real sequence, read from the mask at position ``mask``."""

    mask: int
    columns: tuple[int, ...]

    def lengths(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per sample: one past its last real position (0 for an all-padding row)."""
        mask = inputs[self.mask].reshape(inputs[self.mask].shape[0], -1).ne(0)
        positions = torch.arange(1, mask.shape[1] + 1)
        return (mask * positions).amax(1) if mask.numel() else torch.zeros(len(mask), dtype=torch.long)

    def length(self, inputs: Sequence[torch.Tensor]) -> int:
        real = inputs[self.mask].reshape(inputs[self.mask].shape[0], -1).ne(0).any(0).nonzero()
        return int(real.max()) + 1 if len(real) else 1

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        length = self.length(inputs)
        if length >= inputs[self.mask].shape[1]:
            return list(inputs)
        return [x[:, :length] if i in self.columns else x for i, x in enumerate(inputs)]


def group_by_length(order: torch.Tensor, lengths: torch.Tensor, batch: int, generator: torch.Generator,
                    window: int = 16) -> torch.Tensor:
    """``order`` (a permutation) regrouped: each run of ``window * batch`` samples sorted by length
    (longest first), cut into batches of ``batch``, the batches shuffled by ``generator``."""
    span = window * batch
    chunks = [order[i:i + span] for i in range(0, len(order), span)]
    chunks = [c[torch.sort(lengths[c], descending=True, stable=True).indices] for c in chunks]
    batches = [b for c in chunks for b in c.split(batch)]
    return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=generator)]) if batches else order


def outputs_by_length(module: torch.nn.Module, inputs: Sequence, trim: SequenceTrim, device: torch.device,
                      batch: int = 64) -> list:
    """``module``'s outputs (numpy, graph-output order) on every sample, computed in chunks of
    similar length cut by ``trim`` and put back in the samples' order: the per-epoch holdout
    metrics at the cost of the real tokens (outputs equal to the padded ones, as checked)."""
    import numpy as np

    inputs = [torch.as_tensor(np.ascontiguousarray(x)) for x in inputs]
    order = torch.sort(trim.lengths(inputs), descending=True, stable=True).indices
    chunks = []
    for index in order.split(batch):
        cut = trim([x[index] for x in inputs])
        chunks.append([y.detach().cpu().numpy() for y in _as_tuple(module(*[x.to(device) for x in cut]))])
    restore = torch.argsort(order).numpy()
    return [np.concatenate(parts)[restore] for parts in zip(*chunks)]


def run_by_length(session, model: onnx.ModelProto, inputs: dict, chunk: int = 64) -> list | None:
    """onnxruntime's outputs on every sample, computed on length-sorted chunks cut to their longest
    real sequence and put back in order, when :func:`candidate` allows it and onnxruntime gives
    the same outputs (atol 1e-5 / rtol 1e-4) cut as padded on the first 32 samples; else None.
    The teacher's targets at the cost of the real tokens."""
    import numpy as np

    names = list(inputs)
    tensors = [torch.as_tensor(np.ascontiguousarray(inputs[n])) for n in names]
    trim = candidate(model, tensors)
    if isinstance(trim, str) or [v.name for v in _inputs(model)] != names:
        return None

    def run(index) -> list:
        cut = trim([x[index] for x in tensors])
        return session.run(None, {n: x.numpy() for n, x in zip(names, cut)})

    head = torch.arange(min(_CHECK_SAMPLES, len(tensors[0])))
    padded = session.run(None, {n: inputs[n][:len(head)] for n in names})
    try:
        cut = run(head)
    except Exception:  # noqa: BLE001 -- the graph fixes the length after all
        return None
    if any(a.shape != b.shape or not np.allclose(a, b, atol=_ATOL, rtol=_RTOL) for a, b in zip(padded, cut)):
        return None
    order = torch.sort(trim.lengths(tensors), descending=True, stable=True).indices
    chunks = [run(index) for index in order.split(chunk)]
    restore = torch.argsort(order).numpy()
    return [np.concatenate(parts)[restore] for parts in zip(*chunks)]


def _inputs(model: onnx.ModelProto):
    from onnxprune.graph.shapes import graph_inputs

    return graph_inputs(model)


def candidate(model: onnx.ModelProto, inputs: Sequence[torch.Tensor]) -> SequenceTrim | str:
    """The trim the graph allows, or why none: a mask input, and [N, T] inputs of that T whose
    axis 1 is dynamic in the graph (``inputs`` in graph-input order, as the loop feeds them)."""
    from onnxprune.calibration.text import token_role
    from onnxprune.graph.shapes import graph_inputs, is_fixed

    values = graph_inputs(model)
    roles = [token_role(v.name) for v in values]
    if "attention_mask" not in roles or len(values) != len(inputs):
        return "no attention-mask input"
    mask = roles.index("attention_mask")
    steps = inputs[mask].shape[1] if inputs[mask].dim() == 2 else None
    if steps is None:
        return f"the mask {values[mask].name} is not [N, T]"
    columns = []
    for i, (value, x) in enumerate(zip(values, inputs)):
        if x.dim() != 2 or x.shape[1] != steps:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2 or is_fixed(dims[1]):
            return f"input {value.name} has a fixed sequence length"
        if roles[i] is None:  # an [N, T] input of unknown meaning: not cut blindly
            return f"input {value.name} is [N, T] but not a token input"
        columns.append(i)
    return SequenceTrim(mask, tuple(columns))


def sequence_trim(model: onnx.ModelProto, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                  device: torch.device | None = None) -> SequenceTrim | None:
    """The trim for training ``module`` (the import of ``model``) on ``inputs``, when exact (see
    the module docstring); None, with a log line saying why, otherwise."""
    trim = candidate(model, inputs)
    if isinstance(trim, str):
        log.debug("training batches keep their padding: %s", trim)
        return None
    sample = [x[:_CHECK_SAMPLES].to(device or "cpu") for x in inputs]
    length, steps = trim.length(sample), sample[trim.mask].shape[1]
    if length >= steps:  # the sample fills T: nothing to learn from it, nothing to gain on it
        log.info("training batches keep their padding: the first samples fill all %d positions", steps)
        return None
    ok, why = _same_outputs(module, sample, trim(sample))
    if not ok:
        log.info("training batches keep their padding: the model's outputs change when padding is cut (%s)", why)
        return None
    log.info("training batches cut to their longest real sequence (mask %s; checked on %d samples: %d -> %d "
             "positions, %s)", graph_input_name(model, trim.mask), len(sample[0]), steps, length, why)
    return trim


def graph_input_name(model: onnx.ModelProto, position: int) -> str:
    from onnxprune.graph.shapes import graph_inputs

    return graph_inputs(model)[position].name


def _same_outputs(module: torch.nn.Module, full: list[torch.Tensor], cut: list[torch.Tensor]) -> tuple[bool, str]:
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            a, b = _as_tuple(module(*full)), _as_tuple(module(*cut))
    except Exception as exc:  # noqa: BLE001 -- a shape baked into the import: not trimmable
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        for m, mode in modes.items():
            m.train(mode)
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False, f"an output is {tuple(x.shape)} padded, {tuple(y.shape)} cut"
        if x.is_floating_point():
            if not torch.allclose(x, y, atol=_ATOL, rtol=_RTOL):
                return False, f"max |difference| {float((x - y).abs().max()):.3g}"
            worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
        elif not torch.equal(x, y):
            return False, "an integer output differs"
    return True, f"max |difference| {worst:.2g}"


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
