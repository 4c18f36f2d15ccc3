"""Report plots are real PNGs with the drawn content (not blank canvases)."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from onnxprune.errors import OnnxPruneError
from onnxprune.reporting.plots import plot_layer_widths, plot_trail

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pixels(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(str(path))[..., :3]


def _ink(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """Pixels within a small distance of a colour (antialiasing blurs edges, not fills)."""
    return int((np.abs(pixels - np.asarray(rgb) / 255).max(axis=-1) < 0.02).sum())


def test_layer_widths_draws_both_bar_series(tmp_path):
    before = {f"conv{i}": 64 * (1 + i // 3) for i in range(9)}
    after = {name: width // 2 for name, width in before.items() if name != "conv4"}  # conv4 removed
    path = plot_layer_widths(before, after, tmp_path / "sub" / "widths.png")

    pixels = _pixels(path)
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 500
    before_ink, after_ink = _ink(pixels, (0x9E, 0xCA, 0xE1)), _ink(pixels, (0x08, 0x51, 0x9C))
    assert before_ink > 2000 and after_ink > 1000
    assert after_ink < before_ink  # half the widths and one layer gone: less dark ink than light


def test_layer_widths_goes_horizontal_for_many_layers(tmp_path):
    before = {f"block{i}.conv": 32 for i in range(60)}
    pixels = _pixels(plot_layer_widths(before, {k: 16 for k in before}, tmp_path / "w.png"))
    assert pixels.shape[0] > pixels.shape[1]  # taller than wide: one row per layer


def test_trail_draws_fidelity_and_accuracy(tmp_path):
    points = [dict(macs=2e9 * 0.8**i, sparsity=1 - 0.8**i, fidelity=1 - 0.01 * i * i,
                   accuracy=0.9 - 0.02 * i) for i in range(6)]
    for key in ("macs", "sparsity"):
        pixels = _pixels(plot_trail(points, key, tmp_path / f"{key}.png"))
        assert _ink(pixels, (0x1F, 0x77, 0xB4)) > 200  # matplotlib's first colour: fidelity
        assert _ink(pixels, (0xFF, 0x7F, 0x0E)) > 200  # second colour: accuracy


def test_trail_leaves_out_a_metric_nobody_has(tmp_path):
    points = [dict(sparsity=s, fidelity=1 - s / 2, accuracy=None) for s in (0.0, 0.5, 0.9)]
    pixels = _pixels(plot_trail(points, "sparsity", tmp_path / "t.png"))
    assert _ink(pixels, (0x1F, 0x77, 0xB4)) > 200 and _ink(pixels, (0xFF, 0x7F, 0x0E)) == 0


def test_plot_errors(tmp_path):
    with pytest.raises(OnnxPruneError, match="no layers"):
        plot_layer_widths({}, {}, tmp_path / "a.png")
    with pytest.raises(OnnxPruneError, match="not 'before'"):
        plot_layer_widths({"a": 1}, {"b": 1}, tmp_path / "a.png")
    with pytest.raises(OnnxPruneError, match="have no 'macs'"):
        plot_trail([dict(sparsity=0.1, fidelity=1.0)], "macs", tmp_path / "b.png")
    with pytest.raises(OnnxPruneError, match="no point has any of fidelity, accuracy"):
        plot_trail([dict(macs=1.0)], "macs", tmp_path / "b.png")
    assert not list(tmp_path.iterdir())  # nothing written on error
