"""The training loop under torchrun: 2 CPU processes (gloo) end with identical weights, and only
rank 0 writes the model and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx


def test_two_process_gloo_run(tiny_conv_path, tmp_path):
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((40, 3, 8, 8)).astype(np.float32))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).parents[1] / "support" / "ddp_worker.py"), str(tiny_conv_path), str(calib), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert int(ranks[0]["world"]) == int(ranks[1]["world"]) == 2
    assert bool(ranks[0]["wrote"]) and not bool(ranks[1]["wrote"])
    names = [k for k in ranks[0].files if k not in ("world", "wrote")]
    assert names
    for name in names:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    # the weights moved (training happened) and the written model holds rank 0's weights
    model = onnx.load(str(tmp_path / "out.onnx"))
    w2 = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    original = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(tiny_conv_path)).graph.initializer
                                               if i.name == "w2"))
    assert not np.array_equal(w2, original) and (w2 == 0).any()
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["world_size"] == 2 and report["calibration"]["train"] == 36
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("rank")) == \
        ["calib.npz", "out.onnx", "run.json", "tiny.onnx"]
