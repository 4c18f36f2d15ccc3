"""`python -m onnxprune` is the same as the `onnxprune` command."""

from onnxprune.cli import run

run()
