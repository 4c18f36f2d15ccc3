"""Fixed-batch models: how many samples one call takes, and running N samples in slices of it.

An export without dynamic axes (``torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), ...)``)
declares every input's first dimension as a number B, and onnxruntime then accepts exactly B
samples per call. Here a fixed first dimension B reads as "B samples per call":

* :func:`fixed_batch` is the model's B (None when the batch axis is dynamic);
* :func:`run_in_slices` is the one place that runs a model on onnxruntime over N samples: one
  session, calls of B samples (the last one padded by repeating its rows, the padding's outputs
  dropped), or chunks of ``chunk`` samples for a dynamic batch. The teacher targets, the holdout
  evaluation and the verification go through it.
* :func:`torch_in_slices` does the same for the torch copy, so a module that only runs at B
  (a Reshape or Expand constant that bakes B in) is evaluated at B.
* :func:`torch_batch_check` decides how the torch copy trains: on mini-batches of any size when
  the module run on 2B samples at once equals onnxruntime run B at a time. When it does not,
  :func:`free_batch_constants` rewrites Reshape targets that bake B in ([B, -1] -> [0, -1]) for
  the training copy and the check runs again; :func:`restore_batch_constants` puts B back into
  the pruned graph. What still fails the check (an Expand to [B, ...]) trains at the fixed batch
  (see ``docs/fixed-batch.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.sessions import make_session
from onnxprune.graph.shapes import graph_inputs, infer_static_shapes, random_feeds, static_shape_map

log = logging.getLogger(__name__)

_ALLOWZERO = "onnxprune.allowzero"  # marks a Reshape whose allowzero=1 the batch rewrite set to 0


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch every call must have: the fixed first dimension that the model's inputs share.

    None when some input's first dimension is dynamic (a dynamic axis takes any batch; a fixed
    first dimension next to it is not a batch axis) or when the inputs declare different numbers
    (they are not one batch axis either).
    """
    fixed = set()
    for value in graph_inputs(model):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or not tensor.shape.dim:
            continue  # a scalar or an input without shape has no batch axis
        first = tensor.shape.dim[0]
        if not (first.HasField("dim_value") and first.dim_value > 0):
            return None
        fixed.add(first.dim_value)
    return fixed.pop() if len(fixed) == 1 else None


def fixed_batch_note(model: onnx.ModelProto, label: str) -> str:
    """``label``'s fixed input shapes in words, for error lines: "input 'x' is [1,3,224,224]"."""
    parts = []
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        parts.append(f"input {value.name!r} is [" + ",".join(str(d.dim_value) if d.HasField("dim_value")
                                                              else (d.dim_param or "?") for d in dims) + "]")
    return f"{label}: " + ", ".join(parts)


def _session_batch(sess) -> int | None:
    fixed = set()
    for value in sess.get_inputs():
        if not value.shape:
            continue
        first = value.shape[0]
        if not (isinstance(first, int) and first > 0):
            return None
        fixed.add(first)
    return fixed.pop() if len(fixed) == 1 else None


def _padded(arrays: Mapping[str, np.ndarray], start: int, size: int, n: int) -> tuple[dict[str, np.ndarray], int]:
    """Rows start..start+size of every array; past the end the slice's rows repeat cyclically.
    Returns (feeds, real rows)."""
    real = min(size, n - start)
    index = start + np.arange(size) % real
    if real == size:
        return {k: np.ascontiguousarray(v[start:start + size]) for k, v in arrays.items()}, real
    return {k: np.ascontiguousarray(v[index]) for k, v in arrays.items()}, real


def _concat(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]


def run_in_slices(
    model,
    inputs: Mapping[str, np.ndarray],
    chunk: int = 256,
    providers: Sequence | None = None,
) -> list[np.ndarray]:
    """The model's outputs for all N samples of ``inputs`` ([N, ...] per input name), in graph
    output order, each [N, ...]; see the module docstring.

    ``model`` is a ModelProto, a path or an onnxruntime session (reused as is). A fixed batch B
    means calls of exactly B samples (the last one padded, its padding dropped); a dynamic batch
    means calls of up to ``chunk`` samples.
    """
    sess = model if hasattr(model, "run") and hasattr(model, "get_inputs") else make_session(model, providers)
    n = len(next(iter(inputs.values())))
    if n == 0:
        raise OnnxPruneError("no samples to run")
    batch = _session_batch(sess)
    size, pad = (batch, True) if batch is not None else (max(chunk, 1), False)
    chunks = []
    for start in range(0, n, size):
        if pad:
            feeds, real = _padded(inputs, start, size, n)
        else:
            feeds = {k: v[start:start + size] for k, v in inputs.items()}
            real = None
        outputs = sess.run(None, feeds)
        chunks.append(outputs if real is None or real == size else [o[:real] for o in outputs])
    return _concat(chunks)


def torch_in_slices(module, inputs: Sequence[np.ndarray], device, batch: int = 512,
                    fixed: int | None = None) -> list[np.ndarray]:
    """The module's outputs as numpy, in graph-output order, over every sample of ``inputs``:
    chunks of ``batch``, or exactly ``fixed`` samples per call (the last padded) when the module
    only runs at its fixed batch."""
    import torch

    inputs = [np.asarray(x) for x in inputs]
    n = len(inputs[0])
    size = fixed or batch
    arrays = dict(enumerate(inputs))
    chunks = []
    with torch.no_grad():
        for start in range(0, n, size):
            feeds, real = _padded(arrays, start, size, n) if fixed else (
                {k: v[start:start + size] for k, v in arrays.items()}, None)
            out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[i])).to(device) for i in range(len(inputs))])
            out = [o.detach().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
            chunks.append(out if real is None or real == size else [o[:real] for o in out])
    return _concat(chunks)


def pad_to_multiple(arrays: Sequence, multiple: int):
    """Tensors or arrays (axis 0 = samples) with rows repeated from the start until their count is
    a multiple of ``multiple``; unchanged when it already is."""
    n = len(arrays[0])
    extra = -n % multiple
    if not extra:
        return list(arrays)
    index = np.arange(n + extra) % n
    out = []
    for array in arrays:
        if array is None:
            out.append(None)
            continue
        try:
            import torch

            if isinstance(array, torch.Tensor):
                out.append(array[torch.from_numpy(index)])
                continue
        except ImportError:  # pragma: no cover
            pass
        out.append(array[index])
    return out


def torch_batch_check(imported, batch: int, seed: int = 0) -> tuple[bool, str]:
    """(True, figures) when the torch copy of a model with fixed batch ``batch`` runs 2 x batch
    samples in one call and matches onnxruntime run ``batch`` at a time (atol 1e-5, rtol 1e-4, or
    within 4x the float32 noise, the import check's rule); (False, why) otherwise.

    A Reshape or Expand constant that bakes the batch in makes the torch module fail at 2 x batch
    or mix samples; it then trains at the fixed batch.
    """
    from onnxprune.importing.importer import NOISE_FACTOR, float32_noise, run_torch  # torch: not for bench

    shapes = {name: (2 * batch, *shape[1:]) for name, shape in imported.input_shapes.items()}
    feeds = random_feeds(imported.onnx_model, shapes, seed)
    try:
        expected = run_in_slices(imported.onnx_model, feeds)
    except Exception as exc:  # noqa: BLE001 -- onnxruntime errors have no common type
        return False, f"onnxruntime on {2 * batch} samples in slices of {batch}: {str(exc).splitlines()[0]}"
    try:
        actual = run_torch(imported, feeds)
    except Exception as exc:  # noqa: BLE001 -- a converted module failing at another batch
        return False, f"the torch copy fails on {2 * batch} samples at once ({str(exc).splitlines()[0][:160]})"
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        got = [list(a.shape) for a in actual]
        return False, f"the torch copy on {2 * batch} samples returns shapes {got}, " \
                      f"onnxruntime {[list(e.shape) for e in expected]}"
    errors = [float(np.abs(a.astype(np.float64) - e.astype(np.float64)).max()) if a.size else 0.0
              for a, e in zip(actual, expected)]
    close = [np.allclose(a.astype(np.float64), e.astype(np.float64), atol=1e-5, rtol=1e-4)
             for a, e in zip(actual, expected)]
    if not all(close):
        noise = float32_noise(imported, feeds)
        if noise is None or any(not c and err > NOISE_FACTOR * z for c, err, z in zip(close, errors, noise)):
            return False, f"the torch copy on {2 * batch} samples differs from onnxruntime by " \
                          f"{max(errors):.3g} (float32 noise {'n/a' if noise is None else f'{max(noise):.3g}'})"
    return True, f"the torch copy on {2 * batch} samples matches onnxruntime (max abs error {max(errors):.3g})"


def free_batch_constants(model: onnx.ModelProto, batch: int,
                         input_shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` for training on any batch: every Reshape whose target is an initializer
    starting with ``batch`` (and holding no 0), applied to data whose first dimension is
    ``batch``, gets 0 there instead ("copy the input's first dimension", which equals ``batch`` in
    the original; an ``allowzero=1``, which the dynamo exporter writes, becomes 0 for it). The
    exporters write ``x.view(x.size(0), -1)`` at a fixed batch as Reshape(x, [B, -1]).

    Returns (copy, the outputs of the Reshapes whose targets were rewritten: value names, which
    the passes keep while they may rename an edited target). Expand targets are left alone: an Expand
    to [B, ...] of a [1, ...] tensor has no batch-free spelling. :func:`torch_batch_check` on the
    copy's import decides whether the rewrite is enough; :func:`restore_batch_constants` puts B
    back into the pruned graph.
    """
    try:
        shapes = static_shape_map(infer_static_shapes(model, input_shapes))
    except Exception:  # noqa: BLE001 -- no shapes: no rewrite (the fixed batch is used)
        return model, []
    inits = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def qualifies(node: onnx.NodeProto) -> bool:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            return False
        target = numpy_helper.to_array(inits[node.input[1]])
        if target.ndim != 1 or target.size == 0 or int(target[0]) != batch or (target == 0).any():
            return False  # (a 0 elsewhere: with allowzero it is a literal 0, which 0 for the batch cannot join)
        data = shapes.get(node.input[0])
        return bool(data) and data[0] == batch

    reshapes = [node for node in model.graph.node if qualifies(node)
                and all(qualifies(user) for user in consumers[node.input[1]])]
    if not reshapes:
        return model, []
    targets = {node.input[1] for node in reshapes}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in targets:
            value = numpy_helper.to_array(init).copy()
            value[0] = 0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    outputs = {node.output[0] for node in reshapes}
    for node in out.graph.node:  # the dynamo exporter writes allowzero=1: 0 must mean "copy"
        if node.op_type == "Reshape" and node.output[0] in outputs:
            for attr in node.attribute:
                if attr.name == "allowzero" and attr.i:
                    attr.i = 0
                    node.metadata_props.add(key=_ALLOWZERO, value="1")
    return out, sorted(outputs)


def restore_batch_constants(model: onnx.ModelProto, outputs: Sequence[str], batch: int) -> onnx.ModelProto:
    """Undo :func:`free_batch_constants` in ``model`` (in place, returned): the targets of the
    Reshapes producing ``outputs`` that start with 0 start with ``batch`` again (under whatever
    name the passes gave an edited target)."""
    wanted = set(outputs)
    reshapes = [node for node in model.graph.node
                if node.op_type == "Reshape" and node.output and node.output[0] in wanted and len(node.input) > 1]
    targets = {node.input[1] for node in reshapes}
    for node in reshapes:  # allowzero=1 as the original had it (the target holds no 0 now)
        marks = [p for p in node.metadata_props if p.key == _ALLOWZERO]
        if marks:
            kept = [p for p in node.metadata_props if p.key != _ALLOWZERO]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            for attr in node.attribute:
                if attr.name == "allowzero":
                    attr.i = 1
    for init in model.graph.initializer:
        if init.name in targets:
            value = numpy_helper.to_array(init).copy()
            if value.ndim == 1 and value.size and int(value[0]) == 0:
                value[0] = batch
                init.CopyFrom(numpy_helper.from_array(value, init.name))
    return model


__all__ = ["free_batch_constants", "restore_batch_constants", "fixed_batch", "fixed_batch_note", "pad_to_multiple", "run_in_slices", "torch_batch_check",
           "torch_in_slices"]
