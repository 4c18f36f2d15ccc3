"""measure_latency on real onnxruntime sessions: statistics, interleaving, batching, memory."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from onnxprune.errors import ModelLoadError, OnnxPruneError
from onnxprune.graph.shapes import random_feeds
from onnxprune.measure.latency import (
    LatencyStats,
    ProviderUnavailableError,
    batch_feeds,
    measure_latency,
)


def mlp(width: int, depth: int = 2, inputs: int = 64, seed: int = 0) -> onnx.ModelProto:
    """MatMul+Relu stack [N, inputs] -> [N, 10]; cost grows with width**2 * depth."""
    rng = np.random.default_rng(seed)
    nodes, weights, previous, size = [], [], "x", inputs
    for i in range(depth):
        weights.append(numpy_helper.from_array(rng.standard_normal((size, width)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
        previous, size = f"r{i}", width
    weights.append(numpy_helper.from_array(rng.standard_normal((size, 10)).astype(np.float32), "w_out"))
    nodes.append(helper.make_node("MatMul", [previous, "w_out"], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, f"mlp{width}", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


FEEDS = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}


def test_stats_are_consistent_and_models_keep_their_order():
    stats = measure_latency([mlp(16), mlp(512)], FEEDS, threads=1, batch=2, seconds=0.2, min_runs=15, warmup=2)

    assert [s.name for s in stats] == ["mlp16", "mlp512"]
    for s in stats:
        assert isinstance(s, LatencyStats)
        assert s.provider == "cpu" and s.batch == 2 and s.threads == 1
        assert s.runs >= 15
        assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
        assert s.std_ms >= 0
        assert s.throughput == pytest.approx(2 / (s.mean_ms / 1e3))
        assert s.memory_kind == "rss-peak-delta" and s.peak_memory_bytes >= 0
    # ~1000x the MACs (64*16 + 16*16 vs 64*512 + 512*512 + ...): clearly slower even on a busy CPU
    assert stats[1].p50_ms > 2 * stats[0].p50_ms


def test_min_runs_is_reached_even_with_no_time_budget():
    stats = measure_latency([mlp(32)], FEEDS, threads=1, seconds=0.0, min_runs=40, warmup=0)
    assert stats[0].runs >= 40


def test_the_same_model_twice_measures_alike():
    # interleaving makes a noisy period hit both copies; their medians must agree closely
    model = mlp(256)
    a, b = measure_latency([model, model], FEEDS, threads=1, seconds=0.4, min_runs=30, names=["a", "b"])
    assert 0.5 < a.p50_ms / b.p50_ms < 2.0


def test_peak_memory_covers_the_weights():
    big = mlp(1024, depth=4)  # ~12 MiB of float32 weights
    weight_bytes = sum(numpy_helper.to_array(init).nbytes for init in big.graph.initializer)
    small, large = measure_latency([mlp(16), big], FEEDS, threads=1, seconds=0.0, min_runs=3, warmup=1)
    assert large.peak_memory_bytes >= 0.9 * weight_bytes
    assert small.peak_memory_bytes < large.peak_memory_bytes


def test_batch_feeds_repeats_rows_cyclically():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = batch_feeds({"x": x, "scalar": np.float32(2)}, 5)
    np.testing.assert_array_equal(out["x"], x[[0, 1, 2, 0, 1]])
    assert out["scalar"].shape == ()
    np.testing.assert_array_equal(batch_feeds({"x": x}, 2)["x"], x[:2])


def test_models_may_be_paths_and_have_their_own_feeds(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(mlp(8), str(path))
    other = mlp(8, inputs=32)
    feeds = [FEEDS, {"x": np.ones((1, 32), np.float32)}]
    stats = measure_latency([path, other], feeds, threads=1, seconds=0.0, min_runs=5, warmup=1)
    assert [s.name for s in stats] == ["small", "mlp8"]


def test_random_feeds_follow_the_input_types():
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[N,3] x, int64[N] ids) => (float[N,3] y)'
        " { y = Identity(x) }"
    )
    feeds = random_feeds(model, {"x": (4, 3), "ids": (4,)}, seed=3)
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (4, 3) and feeds["x"].std() > 0
    assert feeds["ids"].dtype == np.int64 and not feeds["ids"].any()
    np.testing.assert_array_equal(feeds["x"], random_feeds(model, {"x": (4, 3), "ids": (4,)}, seed=3)["x"])


def test_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        measure_latency([tmp_path / "missing.onnx"], FEEDS)
    with pytest.raises(OnnxPruneError, match="unknown provider 'tpu'"):
        measure_latency([mlp(8)], FEEDS, provider="tpu")
    with pytest.raises(OnnxPruneError, match="2 feed dicts for 1 models"):
        measure_latency([mlp(8)], [FEEDS, FEEDS])
    with pytest.raises(OnnxPruneError, match="no models"):
        measure_latency([], FEEDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_without_a_gpu_is_refused_clearly():
    with pytest.raises(ProviderUnavailableError, match="provider 'cuda' unavailable: no CUDA device"):
        measure_latency([mlp(8)], FEEDS, provider="cuda")
