"""TOML configuration: precedence default < config file < command line, on real click commands."""

from __future__ import annotations

import json

import click
import pytest
import tomllib
from click.testing import CliRunner

from onnxprune.cli.config_file import (
    config_option,
    effective_config,
    load_config,
    parameter_sources,
)
from onnxprune.cli.main import main
from onnxprune.errors import ConfigError
from onnxprune.reporting.toml import to_toml


@click.command()
@config_option
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--method", default="magnitude")
@click.option("--sparsity", type=float, default=0.5)
@click.option("--epochs", type=int, default=3)
@click.option("--calib", type=click.Path(dir_okay=False), default=None)
@click.option("--input-shape", multiple=True)
@click.option("--batch", default="1")
@click.option("--fine-tune/--no-fine-tune", default=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def prune(ctx, **_):
    click.echo(json.dumps({"config": effective_config(ctx), "sources": parameter_sources(ctx)}))


def _run(args):
    result = CliRunner().invoke(prune, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_precedence_default_config_command_line(tmp_path):
    path = tmp_path / "prune.toml"
    path.write_text('method = "lc"\nsparsity = 0.9\nepochs = 7\nfine-tune = true\njson = true\n')

    out = _run(["--config", str(path), "--epochs", "2", "m.onnx"])

    assert out["config"] == {
        "model": "m.onnx", "method": "lc", "sparsity": 0.9, "epochs": 2, "calib": None,
        "input_shape": [], "batch": "1", "fine_tune": True, "json": True,
    }
    assert out["sources"]["method"] == "config"
    assert out["sources"]["epochs"] == "command line"
    assert out["sources"]["batch"] == "default"
    assert out["sources"]["as_json"] == "config"  # sources are keyed like ctx.params


def test_config_may_come_after_the_options_it_does_not_override(tmp_path):
    path = tmp_path / "prune.toml"
    path.write_text("sparsity = 0.9\nepochs = 7\n")
    out = _run(["--sparsity", "0.2", "--config", str(path)])
    assert out["config"]["sparsity"] == 0.2 and out["config"]["epochs"] == 7


def test_values_are_converted_by_the_options_and_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "conf"
    (sub / "data").mkdir(parents=True)
    (sub / "data" / "digits.npz").write_bytes(b"")
    path = sub / "prune.toml"
    path.write_text(
        'calib = "data/digits.npz"\ninput_shape = "image=1x1x8x8"\nbatch = [1, 8, 32]\nepochs = "4"\n'
        'model = "out/new.onnx"\n'
    )
    out = _run(["--config", str(path)])
    assert out["config"]["calib"] == str(sub / "data" / "digits.npz")  # found next to the file
    assert out["config"]["model"] == "out/new.onnx"  # nothing there: stays relative to the cwd
    assert out["config"]["input_shape"] == ["image=1x1x8x8"]  # one occurrence, not per character
    assert out["config"]["batch"] == "1,8,32"  # a TOML array for a comma-list option
    assert out["config"]["epochs"] == 4


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    path = tmp_path / "prune.toml"
    path.write_text("sparsty = 0.9\n")
    with pytest.raises(ConfigError) as info:
        CliRunner().invoke(prune, ["--config", str(path)], catch_exceptions=False)
    message = str(info.value)
    assert "'sparsty'" in message and "sparsity" in message and "input-shape" in message
    assert "\n" not in message


def test_bad_values_are_reported_by_the_option():
    result = CliRunner().invoke(prune, ["--config", "/dev/null", "--epochs", "x"])
    assert result.exit_code == 2 and "--epochs" in result.output


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("method = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_to_toml_round_trips_the_effective_config(tmp_path):
    path = tmp_path / "prune.toml"
    path.write_text('method = "lc"\nsparsity = 0.95\ninput-shape = ["a=1x2", "b=3"]\n')
    out = _run(["--config", str(path), "--fine-tune"])

    written = tmp_path / "effective.toml"
    written.write_text(to_toml(out["config"]))
    assert tomllib.loads(written.read_text())["input-shape"] == ["a=1x2", "b=3"]
    again = _run(["--config", str(written)])
    assert again["config"] == out["config"]


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "bench.toml"
    path.write_text("bogus = 1\n")
    code = main(["bench", "--config", str(path), "model.onnx"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: unknown key 'bogus'") and err.count("\n") == 1
