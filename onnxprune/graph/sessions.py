"""The one way onnxprune opens an onnxruntime session.

Every session is quiet (warnings off: what matters is checked and raised by the caller) and takes
a ModelProto, its serialized bytes or a path. The >2 GiB rule lives here and only here: protobuf
cannot serialize a message of 2 GiB or more, so a ModelProto of at least :data:`PROTO_LIMIT`
bytes (2 GiB less a 32 MiB margin for the graph itself), and any model over 64 MiB of weights
(``modelio.LARGE_MODEL_BYTES``: a session from bytes keeps them beside its own copy), is saved
with its tensors as external data in a temporary folder (tensor by tensor, no copy of the model)
and the session is built from that file. :mod:`onnxprune.graph.modelio`
uses the same limit to decide when a written model needs external data.

Needs onnx and onnxruntime only, so the torch-free ``bench`` can use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

PROTO_LIMIT = 2**31 - 2**25


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large to serialize as one protobuf message: its initializers'
    data (from dims and type) plus its nodes, against :data:`PROTO_LIMIT` (whose 32 MiB margin
    covers the rest of the graph). Not ``model.ByteSize()``: upb encodes the whole message to
    count it (a transient copy of every weight), and refuses to at 2 GiB."""
    total = 0
    for tensor in model.graph.initializer:
        total += tensor_nbytes(tensor)
        if total >= PROTO_LIMIT:
            return True
    return total + sum(node.ByteSize() for node in model.graph.node) >= PROTO_LIMIT


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and type when it has raw or external data."""
    if tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 8
        count = 1
        for dim in tensor.dims:
            count *= dim
        return count * itemsize
    return tensor.ByteSize()  # typed fields (float_data, ...): small tensors in practice


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike, providers: Sequence | None = None, *,
                 threads: int | None = None, optimize: bool = True, sequential: bool = False):
    """A quiet session on ``providers`` (default: the CPU).

    threads: intra-op threads (None: onnxruntime's default, every core); optimize=False turns graph
    optimizations off, for probes that must see every value computed as written; sequential: one
    inter-op thread and sequential execution, for latency that does not depend on scheduling.
    Returns an ``onnxruntime.InferenceSession``."""
    import onnxruntime as ort  # on first use: `onnxprune --help` and a cost-only inspect need none

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if sequential:
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = list(providers or ["CPUExecutionProvider"])
    if isinstance(model, bytes):
        return ort.InferenceSession(model, options, providers=providers)
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(os.fspath(model), options, providers=providers)
    from onnxprune.graph.modelio import is_large_model, save_with_external_data

    if not needs_external_data(model) and not is_large_model(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    # over 64 MiB of weights (over 2 GiB it is a must): through a file with external data written
    # tensor by tensor from the model. The session from bytes keeps them (InferenceSession's
    # _model_bytes) next to its own copy of the weights: twice the weights, now once.
    with tempfile.TemporaryDirectory(prefix="onnxprune-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_with_external_data(model, path, "model.onnx.data")
        return ort.InferenceSession(str(path), options, providers=providers)
