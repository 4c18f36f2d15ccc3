"""Run by tests/training/test_ddp.py under ``torch.distributed.run``: one prune run per process, then each
rank saves its trained weights and whether it wrote the output, for the test to compare."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from onnxprune.run import gated, pipeline
from onnxprune.training.loop import TrainConfig

torch.set_num_threads(1)
model, calib, out_dir = (Path(a) for a in sys.argv[1:4])
# the run the CLI and the API make: every process trains, only rank 0 verifies and writes
result, _ = gated.run(pipeline.PruneConfig(
    model=model, out=out_dir / "out.onnx", method="magnitude", method_options={"sparsity": 0.6},
    calib=str(calib), train=TrainConfig(epochs=3, batch_size=8, lr=1e-2, quiet=True, device="cpu"),
    report=out_dir / "run.json"), gated.CiOptions())
rank = int(os.environ["RANK"])
state = {name: t.detach().cpu().numpy() for name, t in result.imported.module.state_dict().items()}
np.savez(out_dir / f"rank{rank}.npz", world=result.replica.world, wrote=result.written is not None, **state)
