"""The printed summary says where its accuracy figures come from (issue 18, item 8)."""

from __future__ import annotations

from onnxprune.reporting.run_report import summary_lines


def _report(holdout: int, train: int) -> dict:
    pair = {"before": 100, "after": 50}
    return {"method": "magnitude", "method_options": {"sparsity": 0.5}, "macs": pair, "params": pair,
            "prunable_weights": {"before": {"nonzero": 100, "total": 100}, "after": {"nonzero": 50, "total": 100}},
            "original": {"accuracy": 1.0}, "pruned": {"accuracy": 0.99, "top1_agreement": 0.99, "rel_error": 0.1},
            "calibration": {"train": train, "holdout": holdout}, "seconds": 1.0, "device": "cpu", "world_size": 1}


def test_summary_names_the_holdout_when_there_is_one():
    (line,) = [x for x in summary_lines(_report(144, 1293)) if x.startswith("accuracy")]
    assert line.endswith("(holdout, 144 samples)")


def test_summary_with_holdout_0_names_the_training_data():
    (line,) = [x for x in summary_lines(_report(0, 1437)) if x.startswith("accuracy")]
    assert "holdout," not in line and line.endswith("(training data, 1437 samples, no holdout)")
