"""The CUDA (and TensorRT) paths of the latency helper and `onnxprune bench`.

Marked ``gpu``: tests/conftest.py skips them without a CUDA device, and the fixture below skips
them when onnxruntime's CUDA provider cannot load (giving the reason) rather than failing.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.cli.main import main
from onnxprune.measure.latency import create_session, cuda_status, measure_latency

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda_provider():
    usable, reason = cuda_status()
    if not usable:
        pytest.skip(f"onnxruntime CUDA provider unusable: {reason}")


def conv_net(channels: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
        ],
        f"conv{channels}",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.1, "w"),
            numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32) * 0.1, "fc"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


FEEDS = {"image": np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)}


def test_cuda_session_runs_on_the_gpu_and_matches_the_cpu():
    model = conv_net(32)
    session = create_session(model, "cuda", threads=1)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    gpu = session.run(None, FEEDS)[0]
    cpu = create_session(model, "cpu", threads=1).run(None, FEEDS)[0]
    # TF32 convolutions may be enabled on the GPU: a provider check, not a rewrite check
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-3)


def test_measure_latency_on_cuda_reports_device_memory():
    small, large = measure_latency(
        [conv_net(8), conv_net(256)], FEEDS, provider="cuda", batch=8, seconds=0.3, min_runs=20
    )
    for stats in (small, large):
        assert stats.provider == "cuda" and stats.runs >= 20 and stats.batch == 8
        assert 0 < stats.p50_ms <= stats.p99_ms
        assert stats.memory_kind == "device-used-delta" and stats.peak_memory_bytes >= 0
    # the larger activations (256 vs 8 channels at 64x64, batch 8) need device memory of their own
    assert large.peak_memory_bytes >= small.peak_memory_bytes


def test_bench_measures_cpu_and_cuda_side_by_side(tmp_path, capsys):
    paths = []
    for channels in (64, 16):
        paths.append(tmp_path / f"c{channels}.onnx")
        onnx.save(conv_net(channels), str(paths[-1]))
    code = main(["bench", *map(str, paths), "--providers", "cpu,cuda", "--batch", "1,8", "--json",
                 "--seconds", "0.2", "--min-runs", "10", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning:" not in captured.err  # no fallback warning with a GPU present
    rows = json.loads(captured.out)["results"]
    assert [(r["provider"], r["batch"]) for r in rows][::2] == [("cpu", 1), ("cpu", 8), ("cuda", 1), ("cuda", 8)]


def test_tensorrt_when_available(tmp_path, capsys):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT provider")
    path = tmp_path / "c16.onnx"
    onnx.save(conv_net(16), str(path))
    code = main(["bench", str(path), "--providers", "tensorrt", "--json", "--seconds", "0", "--min-runs", "5"])
    captured = capsys.readouterr()
    if code != 0 and "unavailable" in captured.err:
        pytest.skip(f"TensorRT libraries not loadable here: {captured.err.strip()}")
    assert code == 0, captured.err
    assert json.loads(captured.out)["results"][0]["provider"] == "tensorrt"
