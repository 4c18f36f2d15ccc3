"""Write trained weights back into the ONNX graph by initializer name.

    written.initializer[name] = imported.tensor(name)   (ONNX layout, the initializer's dtype)

for every name in ``imported.params``; the graph itself is a copy of ``imported.onnx_model`` and is
never re-exported from torch. Initializers whose values did not change keep their original
TensorProto (same encoding, same external-data placement), so an unchanged import writes back a
model whose initializers are bit-identical to the normalized input.
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
    """A copy of ``imported.onnx_model`` holding the module's current values; see the docstring."""
    model = onnx.ModelProto()
    model.CopyFrom(imported.onnx_model)
    changed = 0
    for init in model.graph.initializer:
        if init.name not in imported.params:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        value = imported.tensor(init.name).detach().cpu().numpy()
        if tuple(value.shape) != tuple(init.dims):
            raise VerificationError(
                f"initializer {init.name!r}: torch holds shape {tuple(value.shape)}, the graph expects "
                f"{tuple(init.dims)}; prune through the passes, not by resizing torch tensors"
            )
        value = np.ascontiguousarray(value.astype(dtype, copy=False))
        if value.tobytes() == np.ascontiguousarray(numpy_helper.to_array(init)).tobytes():
            continue  # bit-identical: keep the original proto and its encoding
        init.CopyFrom(numpy_helper.from_array(value, init.name))
        changed += 1
    _LOG.debug("write_back: %d of %d mapped initializers changed", changed, len(imported.params))
    return model


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
