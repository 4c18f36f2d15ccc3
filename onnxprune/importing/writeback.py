"""Write trained weights back into the ONNX graph by initializer name.

    written.initializer[name] = imported.tensor(name)   (ONNX layout, the initializer's dtype)

for every name in ``imported.params``; the graph itself is a copy of ``imported.onnx_model`` and is
never re-exported from torch. Initializers whose values did not change keep their original
TensorProto (same encoding, same external-data placement), so an unchanged import writes back a
model whose initializers are bit-identical to the normalized input. Initializers whose data
torch alone holds (``imported.torch_only``, see ``importer.release_weights``) are written from
torch, as raw data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import VerificationError
from onnxprune.importing.importer import ImportedModel

_LOG = logging.getLogger(__name__)


def write_back(imported: ImportedModel) -> onnx.ModelProto:
    """A copy of ``imported.onnx_model`` holding the module's current values; see the docstring.

    Built from a header of the graph without the mapped initializers' data, each of them then
    filled once (the original tensor when bit-identical, else the torch value): one copy of the
    weights. (Copying the whole model and replacing tensors in it held two: protobuf keeps a
    replaced field's bytes in its arena until the message is freed.)"""
    from onnxprune.graph.modelio import weightless_header

    source = imported.onnx_model
    originals = {init.name: init for init in source.graph.initializer if init.name in imported.params}
    model = weightless_header(source, lambda tensor: tensor.name in originals)
    changed = 0
    for init in model.graph.initializer:
        original = originals.get(init.name)
        if original is None:
            continue
        if init.name in imported.torch_only:  # its data is in torch only (importer.release_weights)
            init.CopyFrom(numpy_helper.from_array(_onnx_value(imported, original), init.name))
            changed += 1
            continue
        value = _onnx_value(imported, original)
        if _same_bits(value, np.ascontiguousarray(numpy_helper.to_array(original))):
            init.CopyFrom(original)  # bit-identical: the original proto and its encoding
            continue
        init.CopyFrom(numpy_helper.from_array(value, init.name))
        changed += 1
    _LOG.debug("write_back: %d of %d mapped initializers changed", changed, len(imported.params))
    return model


def _onnx_value(imported: ImportedModel, original: onnx.TensorProto) -> np.ndarray:
    """The torch value of ``original`` in ONNX layout and dtype (no copy when they agree)."""
    dtype = helper.tensor_dtype_to_np_dtype(original.data_type)
    value = imported.tensor(original.name).detach().cpu().numpy()
    if tuple(value.shape) != tuple(original.dims):
        raise VerificationError(
            f"initializer {original.name!r}: torch holds shape {tuple(value.shape)}, the graph expects "
            f"{tuple(original.dims)}; prune through the passes, not by resizing torch tensors"
        )
    return np.ascontiguousarray(value.astype(dtype, copy=False))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads and -0.0 included) without byte copies of either array."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = np.dtype(f"u{a.itemsize}") if a.itemsize in (1, 2, 4, 8) else np.uint8
    return bool(np.array_equal(a.reshape(-1).view(bits), b.reshape(-1).view(bits)))


def add_run_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> onnx.ModelProto:
    """A copy of ``model`` with ``metadata`` added to metadata_props (other keys are kept;
    a key already present is overwritten). Non-string values are stored as JSON."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    for prop in out.metadata_props:
        if prop.key in values:
            prop.value = values.pop(prop.key)
    for key, value in values.items():
        entry = out.metadata_props.add()
        entry.key, entry.value = str(key), value
    return out
