"""The pipeline's final check: strict atol 1e-5 / rtol 1e-4, or within 4x the torch model's own
float32 noise for outputs that training scaled up; a real difference still fails."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxprune.calibration import CalibrationSet
from onnxprune.errors import VerificationError
from onnxprune.importing.importer import import_model
from onnxprune.importing.writeback import write_back
from onnxprune.run.pipeline import verify
from tests.support.models import SAMPLE_MODELS


@pytest.fixture
def scaled_mlp():
    """The sample MLP with its layers scaled up and its logits centred: values in the thousands,
    many near zero, where float32 rounding of the large sums exceeds atol 1e-5."""
    imported = import_model(onnx.load(str(SAMPLE_MODELS / "mlp.onnx")))
    images = np.load(SAMPLE_MODELS / "digits_test.npz")["image"]
    with torch.no_grad():
        matrices = [p for p in imported.module.parameters() if p.ndim == 2]
        for param in matrices:
            param.mul_(7.0)
        logits = imported.module(torch.from_numpy(images))
        last_bias = next(p for p in imported.module.parameters() if p.ndim == 1 and p.shape[0] == 10)
        last_bias.sub_(logits.mean(dim=0))
    return imported, CalibrationSet({"image": images}, None)


def test_scaled_outputs_pass_within_float32_noise(scaled_mlp, caplog):
    imported, data = scaled_mlp
    model = write_back(imported)
    logits = imported.module(torch.from_numpy(data.inputs["image"])).detach().numpy()
    assert np.abs(logits).max() > 1000
    verify(model, imported.module, data)
    # the strict rule alone would have refused it: the float32-noise rule was needed
    assert any("within 4x float32 noise" in record.getMessage() for record in caplog.records)


def test_a_real_difference_still_fails(scaled_mlp):
    imported, data = scaled_mlp
    model = write_back(imported)
    init = next(i for i in model.graph.initializer if len(i.dims) == 2)
    array = numpy_helper.to_array(init).copy()
    array += 0.001 * np.abs(array).max()  # a small shift of every weight of the first layer
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    with pytest.raises(VerificationError, match="differs"):
        verify(model, imported.module, data)
