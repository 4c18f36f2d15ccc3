"""Training losses: distillation from the teacher's outputs, optionally plus labels.

For each graph output k with student s_k and teacher t_k:

* class logits (a float output of shape [N, C], C > 1), "kd":
  T^2 * KL(softmax(t_k / T) || softmax(s_k / T)), averaged over the batch (Hinton et al.; the
  T^2 keeps gradient size independent of T);
* any other output, "mse": mean((s_k - t_k)^2).

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


def output_kinds(outputs: Sequence[np.ndarray]) -> list[str]:
    """'logits' for [N, C>1] float outputs, 'dense' for everything else."""
    return ["logits" if o.ndim == 2 and o.shape[1] > 1 and o.dtype.kind == "f" else "dense"
            for o in outputs]


class TaskLoss:
    """Callable (student outputs, teacher outputs, labels or None) -> scalar loss."""

    def __init__(self, kinds: Sequence[str], mode: str | None = None, has_labels: bool = False,
                 temperature: float = 2.0) -> None:
        mode = mode or ("kd+ce" if has_labels else "kd")
        if mode not in LOSSES:
            raise CalibrationError(f"--loss {mode!r}: expected one of {', '.join(LOSSES)}")
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

    def __call__(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        parts = self.mode.split("+")
        total = student[0].new_zeros(())
        if "kd" in parts or "mse" in parts:
            for kind, s, t in zip(self.kinds, student, teacher):
                if kind == "logits" and "kd" in parts:
                    total = total + kd_loss(s, t, self.temperature)
                else:
                    total = total + F.mse_loss(s.float(), t.float())
        if "ce" in parts and labels is not None:
            logits = student[self.kinds.index("logits")]
            total = total + F.cross_entropy(logits.float(), labels)
        return total


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
    if "logits" in kinds:
        k = list(kinds).index("logits")
        top1 = student[k].argmax(axis=1)
        result["top1_agreement"] = float((top1 == teacher[k].argmax(axis=1)).mean())
        if labels is not None:
            result["accuracy"] = float((top1 == labels).mean())
    return result
