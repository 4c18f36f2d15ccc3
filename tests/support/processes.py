"""Subprocess helpers for the Ctrl-C tests."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` giving the child SIGINT's default disposition. A shell without job control
    starts a background job (``cmd &``, as some CI runners launch the suite) with SIGINT ignored,
    and a child inherits that: the Ctrl-C tests would then deliver a signal nobody sees."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
