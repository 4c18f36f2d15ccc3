"""The command line: one module per command (prune, apply, inspect, bench), the entry point in main.

Only this package imports click; the rest of onnxprune is plain Python that a script can call."""
