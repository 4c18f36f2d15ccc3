"""`python -m onnxprune` is the same as the `onnxprune` command."""

import sys

try:
    from onnxprune.cli.main import run
except KeyboardInterrupt:  # Ctrl-C while the CLI is still being imported: one line, nothing written
    sys.stderr.write("error: interrupted (Ctrl-C); nothing of this run was written\n")
    sys.exit(130)

run()
