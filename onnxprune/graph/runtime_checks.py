"""Checks that onnxruntime can run a model before any work is done with it (one error line each).

- :func:`check_runtime_opset`: the model's ``ai.onnx`` opset is one this onnxruntime runs
  (found by probing a one-node model; the result is cached).
- :func:`check_batch_memory`: one call at ``batch`` rows fits in the memory available, estimated
  from the shapes ONNX infers at one row: inputs (with the float64 draw of random inputs),
  outputs, and the two largest intermediate tensors alive at once.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import onnx
from onnx import helper, shape_inference

from onnxprune.errors import OnnxPruneError, UnsupportedModelError
from onnxprune.graph.sessions import make_session


def _opset(model: onnx.ModelProto) -> int | None:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)


@functools.lru_cache(maxsize=None)
def runtime_runs_opset(version: int) -> bool:
    """Whether this onnxruntime loads an ``ai.onnx`` model of ``version`` (a one-node probe)."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", version)])
    probe.ir_version = 8
    try:
        make_session(probe)
    except Exception:  # noqa: BLE001 -- any refusal means: not this opset
        return False
    return True


@functools.lru_cache(maxsize=None)
def runtime_max_opset(start: int) -> int | None:
    """The newest ``ai.onnx`` opset at or below ``start`` that this onnxruntime runs."""
    for version in range(start, 0, -1):
        if runtime_runs_opset(version):
            return version
    return None


def check_runtime_opset(model: onnx.ModelProto, label: str | os.PathLike) -> None:
    """UnsupportedModelError naming the opset when onnxruntime cannot run the model's opset."""
    version = _opset(model)
    if version is None or runtime_runs_opset(version):
        return
    import onnxruntime as ort

    newest = runtime_max_opset(version - 1)
    raise UnsupportedModelError(
        f"{label}: opset {version} (ai.onnx) is not one onnxruntime {ort.__version__} runs"
        + (f" (its newest is opset {newest})" if newest else "")
        + "; convert the model to an older opset (onnx.version_converter) or upgrade onnxruntime")


def proc_kib_field(path: str, key: str) -> int | None:
    """A ``key:  N kB`` line of a Linux /proc file, in bytes; None where unknown."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    return proc_kib_field("/proc/meminfo", "MemAvailable")


def _bytes(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    dims = tensor.shape.dim
    if not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    return math.prod(d.dim_value for d in dims) * itemsize


def call_bytes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Estimated bytes of one call at ``shapes``: ``inputs`` (counted 3x for float inputs: the
    float64 random draw and the cast), ``outputs``, ``activations`` (the two largest
    intermediates), and ``total``. Values whose shape ONNX cannot infer are left out."""
    from onnxprune.graph.shapes import with_static_inputs

    fixed = with_static_inputs(model, shapes)
    fixed.graph.ClearField("value_info")
    try:
        inferred = shape_inference.infer_shapes(fixed, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 -- best effort: the inputs alone still count
        inferred = fixed
    initializers = {init.name for init in model.graph.initializer}
    inputs = 0
    for value in inferred.graph.input:
        if value.name in initializers:
            continue
        size = _bytes(value) or 0
        float_input = value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        inputs += 3 * size if float_input else size
    outputs = sum(_bytes(v) or 0 for v in inferred.graph.output)
    middle = sorted((_bytes(v) or 0 for v in inferred.graph.value_info), reverse=True)[:2]
    return {"inputs": inputs, "outputs": outputs, "activations": sum(middle), "total": inputs + outputs + sum(middle)}


def check_batch_memory(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], label: str, *,
                       option: str = "--batch", available: int | None = None) -> None:
    """OnnxPruneError (estimate and refusal) when one call at ``shapes`` cannot fit in memory."""
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    batch = max((s[0] for s in shapes.values() if s), default=1)
    one = {name: (1, *shape[1:]) if shape else shape for name, shape in shapes.items()}
    per_row = call_bytes(model, one)
    need = per_row["total"] * batch
    if need <= available:
        return
    fits = max(int(available // max(per_row["total"], 1)), 0)
    gib = lambda n: f"{n / 2**30:.3g} GiB"  # noqa: E731
    raise OnnxPruneError(
        f"{option} {batch}: one call of {label} needs about {gib(need)} (inputs {gib(per_row['inputs'] * batch)}, "
        f"outputs {gib(per_row['outputs'] * batch)}, activations {gib(per_row['activations'] * batch)}), more than "
        f"the {gib(available)} of memory available; use {option} {fits} or less" if fits else
        f"{option} {batch}: one call of {label} needs about {gib(need)}, more than the {gib(available)} available")
