"""`onnxprune bench` end to end through the CLI entry point, on real models and onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from onnxprune.cli.main import main
from onnxprune.graph.macs import count_macs

FAST = ["--threads", "1", "--seconds", "0", "--min-runs", "5", "--warmup", "1"]


def conv_net(path, channels: int, height: str | int = 16, batch: str | int = "N") -> None:
    """Conv(3->c, 3x3)-Relu-GAP-Gemm(c->10) with input [batch, 3, height, 16]."""
    rng = np.random.default_rng(channels)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc", "bias"], ["logits"], name="fc", transB=1),
        ],
        "net",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [batch, 3, height, 16])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [batch, 10])],
        [
            numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32), "fc"),
            numpy_helper.from_array(np.zeros(10, np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


@pytest.fixture
def two_models(tmp_path):
    a, b = tmp_path / "wide.onnx", tmp_path / "narrow.onnx"
    conv_net(a, 64)
    conv_net(b, 8)
    return a, b


def _json(capsys, args) -> dict:
    code = main(["bench", *args, "--json", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_json_results_per_provider_batch_and_model(two_models, capsys):
    a, b = two_models
    out = _json(capsys, [str(a), str(b), "--batch", "1,4"])

    rows = out["results"]
    assert [(r["name"], r["batch"]) for r in rows] == [("wide", 1), ("narrow", 1), ("wide", 4), ("narrow", 4)]
    for row in rows:
        assert row["provider"] == "cpu" and row["threads"] == 1 and row["runs"] >= 5
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[0]["p50_ms"] / rows[1]["p50_ms"])
    cost = count_macs(onnx.load(str(a)), {"image": (1, 3, 16, 16)})
    assert rows[0]["macs"] == cost.total_macs and rows[0]["params"] == cost.total_params
    assert rows[0]["size_bytes"] == a.stat().st_size
    assert out["config"]["batch"] == "1,4" and out["config"]["threads"] == 1


def test_table_shows_every_model_and_the_speedup(two_models, capsys):
    a, b = two_models
    code = main(["bench", str(a), str(b), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "wide" in out and "narrow" in out and "speedup" in out and "1.00x" in out
    assert "rss-peak-delta" in out  # the table says which memory figure it shows


def test_calibration_npz_feeds_the_models(two_models, tmp_path, capsys):
    a, _ = two_models
    data = tmp_path / "data.npz"
    np.savez(data, image=np.ones((3, 3, 16, 16), np.float32))
    assert _json(capsys, [str(a), "--calib", str(data), "--batch", "8"])["results"][0]["batch"] == 8

    np.savez(data, other=np.ones((3, 3, 16, 16), np.float32))
    assert main(["bench", str(a), "--calib", str(data), *FAST]) == 2
    assert "no array 'image'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
def test_image_folder_feeds_the_models(two_models, tmp_path, capsys):
    from torchvision.io import encode_png

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        pixels = torch.full((3, 20, 24), 40 * i, dtype=torch.uint8)
        (folder / f"{i}.png").write_bytes(encode_png(pixels).numpy().tobytes())
    (folder / "broken.png").write_bytes(b"not a png")
    args = [str(two_models[0]), "--calib", str(folder), "--mean", "0.5", "--std", "0.25", "--batch", "2"]
    rows = _json(capsys, args)["results"]
    assert rows[0]["batch"] == 2 and rows[0]["runs"] >= 5


def test_dynamic_dimensions_come_from_input_shape(tmp_path, capsys):
    path = tmp_path / "dyn.onnx"
    conv_net(path, 8, height="H")
    assert main(["bench", str(path), *FAST]) == 2
    assert "--input-shape" in capsys.readouterr().err

    rows = _json(capsys, [str(path), "--input-shape", "image=1x3x24x16", "--batch", "2"])["results"]
    cost = count_macs(onnx.load(str(path)), {"image": (1, 3, 24, 16)})
    assert rows[0]["macs"] == cost.total_macs and rows[0]["batch"] == 2


def test_static_batch_cannot_be_changed(tmp_path, capsys):
    path = tmp_path / "static.onnx"
    conv_net(path, 8, batch=1)
    assert main(["bench", str(path), "--batch", "4", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch 4: static: input 'image' is [1,3,16,16], a fixed batch of 1" in err


@pytest.mark.parametrize("content", [None, b"", b"this is not onnx"])
def test_bad_model_file_is_one_line_and_non_zero(tmp_path, capsys, content):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    code = main(["bench", str(path), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}") and err.count("\n") == 1 and "Traceback" not in err


def test_config_file_sets_bench_options(two_models, tmp_path, capsys):
    a, b = two_models
    config = tmp_path / "bench.toml"
    config.write_text('batch = [2]\nmin-runs = 7\nseconds = 0\nthreads = 1\nwarmup = 1\njson = true\n')
    code = main(["bench", "--config", str(config), str(a), str(b), "--min-runs", "6"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["config"]["batch"] == "2" and out["config"]["min_runs"] == 6
    assert all(r["batch"] == 2 and r["runs"] >= 6 for r in out["results"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_without_gpu_warns_once_and_measures_the_cpu(two_models, capsys):
    a, _ = two_models
    code = main(["bench", str(a), "--providers", "cpu,cuda", "--json", *FAST])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.count("\n") == 1 and "cuda skipped: no CUDA device" in captured.err
    assert [r["provider"] for r in json.loads(captured.out)["results"]] == ["cpu"]


def test_unknown_provider_is_an_error(two_models, capsys):
    assert main(["bench", str(two_models[0]), "--providers", "tpu", *FAST]) == 2
    assert "unknown provider 'tpu'" in capsys.readouterr().err
