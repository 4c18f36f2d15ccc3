"""A fast subset of the structured sweep (issue 14 item 8; the whole table: docs/structures.md,
``benchmarks/structured_sweep.py --matrix``).

Two small torchvision families (random weights, measured BatchNorm statistics), the TorchScript
exporter, lagrangian to half the MACs and ltp with ``--granularity channel``, one short epoch on
random images at 32 px, through the public API: every cell is a verified smaller model (the
pipeline checks the result against the trained torch model) or a refusal before training, and
none fails after training.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")

from tests.support.sweep import sweep_cell  # noqa: E402

MODELS = ("resnet18", "mobilenet_v3_small")
METHODS = ("lagrangian", "ltp")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_cell_is_a_verified_smaller_model_or_a_refusal_before_training(folder, name, method) -> None:
    row = sweep_cell(name, "torchscript", method, folder, size=32, samples=32, epochs=1, batch_size=16)
    assert row["outcome"] in ("pruned", "refused"), row
    if row["outcome"] == "pruned":
        assert row["verified"] and row["macs_frac"] < 1.0, row
        if method == "lagrangian":  # the MAC target is met
            assert row["macs_frac"] <= 0.5 + 0.02, row
