"""Training losses: distillation from the teacher's outputs, optionally plus labels.

For each graph output k with student s_k and teacher t_k:

* class logits (a float output of shape [N, C], C > 1), "kd":
  T^2 * KL(softmax(t_k / T) || softmax(s_k / T)), averaged over the batch (Hinton et al.; the
  T^2 keeps gradient size independent of T);
* an embedding (kind "embedding": a float [N, D] output whose teacher rows all have unit L2
  norm, or, in a model that takes token ids, one not produced by a linear layer; kind
  "token_embedding": a float [N, T, D] output of such a model). A pooled embedding gets
  "cosine": mean over rows of 1 - cos(s_k, t_k) along the last axis. Sentence embeddings are
  compared by cosine, an L2-normalized one carries only its direction, and for a unit-norm
  teacher 1 - cos = ||s/|s| - t||^2 / 2: an MSE on the scale of the embedding, where a plain
  MSE on its components (~1/sqrt(D) each) would be D/2 times smaller. Token embeddings get
  "mse": pooling downstream averages them, so their magnitudes matter too;
* any other output, "mse": mean((s_k - t_k)^2).

``--distill-loss`` overrides the choice per kind: ``auto`` (as above), ``kl`` (the KL term on
every [N, C] float output, embeddings included), ``mse`` (MSE on every output), ``cosine``
(cosine on logits and embeddings; other outputs keep MSE).

The task loss is the sum over outputs. With labels, cross-entropy of the first logits output
against them is added ("kd+ce", the default when labels exist). ``--loss`` picks explicitly:
``kd`` (distillation as above, labels ignored), ``mse`` (MSE on every output), ``ce`` (labels
only), ``kd+ce``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from onnxprune.errors import CalibrationError

LOSSES = ("kd", "mse", "ce", "kd+ce")
DISTILL_LOSSES = ("auto", "kl", "mse", "cosine")
EMBEDDING_KINDS = ("embedding", "token_embedding")
_UNIT_NORM_TOL = 1e-3
# ops that pass values on unchanged in the walk from an output back to the op that computed it
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
_LINEAR = {"Gemm", "MatMul", "Conv", "ConvTranspose"}


def output_kinds(outputs: Sequence[np.ndarray], model=None) -> list[str]:
    """Per output: 'logits' ([N, C>1] float), 'embedding' (such an output with unit-norm rows, or
    not computed by a linear layer in a token model), 'token_embedding' ([N, T, D] float of a
    token model), 'dense' (everything else). ``model``: the ONNX model, for the graph checks;
    without it only the unit-norm test tells embeddings from logits."""
    token_model = model is not None and _takes_token_ids(model)
    names = [o.name for o in model.graph.output] if model is not None else [None] * len(outputs)
    kinds = []
    for array, name in zip(outputs, names):
        floating = array.dtype.kind == "f"
        if floating and array.ndim == 2 and array.shape[1] > 1:
            if _unit_rows(array) or (token_model and not _from_linear(model, name)):
                kinds.append("embedding")
            else:
                kinds.append("logits")
        elif floating and array.ndim == 3 and array.shape[2] > 1 and token_model:
            kinds.append("token_embedding")
        else:
            kinds.append("dense")
    return kinds


def _unit_rows(array: np.ndarray) -> bool:
    """Every row of unit L2 norm; softmax rows near one-hot (norm ~1 too) do not count."""
    wide = array.astype(np.float64)
    norms = np.linalg.norm(wide, axis=-1)
    if not len(norms) or not np.all(np.abs(norms - 1.0) < _UNIT_NORM_TOL):
        return False
    probabilities = bool((wide >= 0).all()) and bool(np.all(np.abs(wide.sum(-1) - 1.0) < _UNIT_NORM_TOL))
    return not probabilities


def _takes_token_ids(model) -> bool:
    """An integer graph input that indexes a table (Gather's indices), as token ids do."""
    from onnxprune.graph.shapes import graph_inputs

    integer = {v.name for v in graph_inputs(model) if v.type.tensor_type.elem_type in (6, 7)}  # int32, int64
    frontier = set(integer)
    for node in model.graph.node:  # topological order: a Cast/Reshape of an id input is followed
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in frontier:
            frontier.update(node.output)
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in frontier:
            return True
    return False


def _from_linear(model, name: str) -> bool:
    """Whether ``name`` is computed by a linear layer (Gemm, MatMul, Conv, or a bias Add on one),
    looking through ops that only pass values on."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(name)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is None:
        return False
    if node.op_type == "Add":
        return any(producers.get(i) is not None and producers[i].op_type in _LINEAR for i in node.input)
    return node.op_type in _LINEAR


class TaskLoss:
    """Callable (student outputs, teacher outputs, labels or None) -> scalar loss."""

    def __init__(self, kinds: Sequence[str], mode: str | None = None, has_labels: bool = False,
                 temperature: float = 2.0, distill: str = "auto") -> None:
        mode = mode or ("kd+ce" if has_labels else "kd")
        if mode not in LOSSES:
            raise CalibrationError(f"--loss {mode!r}: expected one of {', '.join(LOSSES)}")
        if distill not in DISTILL_LOSSES:
            raise CalibrationError(f"--distill-loss {distill!r}: expected one of {', '.join(DISTILL_LOSSES)}")
        if "ce" in mode.split("+") and not has_labels:
            raise CalibrationError(f"--loss {mode} needs labels: add a 'labels' array to the "
                                   f".npz or pass --labels labels.npy")
        if "ce" in mode.split("+") and "logits" not in kinds:
            raise CalibrationError(f"--loss {mode}: the model has no [N, C] logits output")
        if temperature <= 0:
            raise CalibrationError(f"--temperature {temperature}: must be positive")
        self.kinds = list(kinds)
        self.mode = mode
        self.temperature = temperature
        self.distill = distill
        # the distillation term of each output under "kd" ("mse" mode is MSE everywhere)
        self.terms = [_term(kind, distill) for kind in self.kinds]

    def __call__(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        parts = self.mode.split("+")
        total = student[0].new_zeros(())
        if "kd" in parts or "mse" in parts:
            for term, s, t in zip(self.terms, student, teacher):
                if "kd" in parts and term == "kl":
                    total = total + kd_loss(s, t, self.temperature)
                elif "kd" in parts and term == "cosine":
                    total = total + cosine_loss(s, t)
                else:
                    total = total + F.mse_loss(s.float(), t.float())
        if "ce" in parts and labels is not None:
            logits = student[self.kinds.index("logits")]
            total = total + F.cross_entropy(logits.float(), labels)
        return total


def _term(kind: str, distill: str) -> str:
    """'kl', 'cosine' or 'mse' for an output of ``kind`` under ``--distill-loss distill``."""
    if distill == "auto":
        return {"logits": "kl", "embedding": "cosine"}.get(kind, "mse")
    if distill == "kl":
        return "kl" if kind in ("logits", "embedding") else "mse"
    if distill == "cosine":
        return "cosine" if kind != "dense" else "mse"
    return "mse"


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(s, t)), cosine along the last axis, mean over every row (and token)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-12)).mean()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def fidelity(student: Sequence[np.ndarray], teacher: Sequence[np.ndarray], kinds: Sequence[str],
             labels: np.ndarray | None = None) -> dict[str, float]:
    """Agreement with the original: top-1 agreement (first logits output), output errors,
    accuracy against labels when given."""
    result: dict[str, float] = {}
    errors = [np.abs(s.astype(np.float64) - t) for s, t in zip(student, teacher)]
    result["max_abs_error"] = float(max(e.max() for e in errors))
    norm = sum(float(np.square(t.astype(np.float64)).sum()) for t in teacher)
    result["rel_error"] = float(np.sqrt(sum(float(np.square(e).sum()) for e in errors) / max(norm, 1e-30)))
    embeddings = [k for k, kind in enumerate(kinds) if kind in EMBEDDING_KINDS]
    if embeddings:  # mean cosine similarity with the original, over rows (and tokens)
        k = embeddings[0]
        result["mean_cosine"] = _mean_cosine(student[k], teacher[k])
    if "logits" in kinds:
        k = list(kinds).index("logits")
        top1 = student[k].argmax(axis=1)
        result["top1_agreement"] = float((top1 == teacher[k].argmax(axis=1)).mean())
        if labels is not None:
            result["accuracy"] = float((top1 == labels).mean())
    return result


def _mean_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    s, t = student.astype(np.float64), teacher.astype(np.float64)
    dots = (s * t).sum(-1)
    norms = np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1)
    return float(np.mean(dots / np.maximum(norms, 1e-30)))
