"""``--sparse-storage``: store mostly-zero weights as ONNX sparse tensors.

Representation: each converted initializer W becomes a ``Constant`` node with a
``sparse_value`` attribute whose output is named W, placed first in the graph. (The
alternative, ``graph.sparse_initializer``, loads in onnxruntime but fails the checker's full
check: shape inference types it ``sparse_tensor(float)``, which Gemm/Conv/MatMul reject.)
The Constant's output is an ordinary dense tensor, so every consumer and the shape inference
stay valid.

A float32 initializer with n elements of which nnz are nonzero costs 4n bytes dense; as a
``SparseTensorProto`` it costs 4·nnz (values) + 8·nnz (int64 linear indices, the only index
type the ONNX checker accepts), so it is converted only where 12·nnz < 4n − overhead, i.e. below
about 1/3 density. onnxruntime densifies sparse initializers when it loads the model, so the
file shrinks with sparsity while the outputs stay bit-identical and the latency unchanged
(dense kernels gain nothing from scattered zeros; channel granularity is the way to speed).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph.names import OnnxNames

log = logging.getLogger(__name__)

_DENSITY_LIMIT = 1.0 / 3.0  # 12 bytes per stored nonzero vs 4 per dense element
_MIN_ELEMENTS = 64  # tiny tensors: protobuf overhead outweighs any saving


def to_sparse_storage(model: onnx.ModelProto, min_elements: int = _MIN_ELEMENTS) -> onnx.ModelProto:
    """A copy of ``model`` with each float initializer below 1/3 density replaced by a
    ``Constant(sparse_value=...)`` node (values + int64 linear indices, shape kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph_inputs = {i.name for i in graph.input}
    names = OnnxNames.of_proto(graph)
    keep, constants = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if (init.name in graph_inputs or array.dtype.kind != "f" or array.size < min_elements
                or np.count_nonzero(array) >= _DENSITY_LIMIT * array.size):
            keep.append(init)
            continue
        flat = array.reshape(-1)
        indices = np.flatnonzero(flat).astype(np.int64)
        values = numpy_helper.from_array(flat[indices], init.name)
        sparse = onnx.helper.make_sparse_tensor(values, numpy_helper.from_array(indices, ""), list(array.shape))
        node_name = names.fresh(f"sparse_storage/{init.name}")
        constants.append(onnx.helper.make_node("Constant", [], [init.name], name=node_name, sparse_value=sparse))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    log.info("sparse storage: %d initializers stored sparse", len(constants))
    return out


def to_dense_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse: every ``Constant(sparse_value)`` back to a dense initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Constant" or "sparse_value" not in attrs:
            nodes.append(node)
            continue
        sparse = attrs["sparse_value"].sparse_tensor
        shape = tuple(sparse.dims)
        dense = np.zeros(int(np.prod(shape)), dtype=onnx.helper.tensor_dtype_to_np_dtype(sparse.values.data_type))
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        if indices.ndim == 2:  # [nnz, rank] coordinates
            indices = np.ravel_multi_index(tuple(indices.T), shape)
        dense[indices] = numpy_helper.to_array(sparse.values)
        out.graph.initializer.append(numpy_helper.from_array(dense.reshape(shape), node.output[0]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
